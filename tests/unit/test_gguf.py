"""GGUF export parts: q/k permutation, tensor types, hyperparameter keys, rope factors, tokenizer metadata."""

from __future__ import annotations

import logging
import math

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast, Qwen2Config
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from llm_finetuning.errors import UserError
from llm_finetuning.export.gguf_tensors import llama3_rope_factors, permute_rotary, tensor_type, write_hyperparameters
from llm_finetuning.export.gguf_tokenizer import _pre_tokenizer_name, read_vocab
from llm_finetuning.models.tiny import build_tokenizer

pytestmark = pytest.mark.unit
F32, F16, Q8_0 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0


def test_rotary_permutation_interleaves_each_heads_halves_and_transformers_undoes_it():
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)  # two heads of dimension 4: halves [0 1|2 3], [4 5|6 7]
    assert permute_rotary(rows, heads=2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    weight = np.random.default_rng(0).normal(size=(2 * 16, 64)).astype(np.float32)  # 2 KV heads of dimension 16
    processor = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    restored = processor.process(permute_rotary(weight, heads=2), "blk.0.attn_k.weight").weights
    assert np.array_equal(restored, weight)


def test_tensor_types_keep_1d_in_f32_and_q8_0_only_for_whole_blocks(caplog):
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q8_0") == F32
    assert tensor_type("blk.0.attn_q.bias", (64,), "f16") == F32
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "q8_0") == Q8_0
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "bf16") == gguf.GGMLQuantizationType.BF16
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "f32") == F32
    with caplog.at_level(logging.INFO, logger="llm_finetuning.export.gguf_tensors"):
        assert tensor_type("blk.0.ffn_down.weight", (64, 48), "q8_0") == F16
    assert "blk.0.ffn_down.weight" in caplog.text and "F16" in caplog.text


def write_keys(tmp_path, config, arch=gguf.MODEL_ARCH.LLAMA):
    path = tmp_path / "keys.gguf"
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    write_hyperparameters(writer, config, arch, gguf.LlamaFileType.MOSTLY_F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return {key: field.contents() for key, field in gguf.GGUFReader(path).fields.items()}


def test_hyperparameters_include_head_size_and_rope_scaling(tmp_path):
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,  # not hidden / heads: llama.cpp must be told
        intermediate_size=96,
        num_hidden_layers=3,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        vocab_size=300,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5},
    )
    keys = write_keys(tmp_path, config)
    assert keys["llama.attention.key_length"] == keys["llama.attention.value_length"] == 32
    assert keys["llama.rope.dimension_count"] == 32 and keys["llama.attention.head_count_kv"] == 1
    assert keys["llama.rope.freq_base"] == 5e5 and keys["llama.context_length"] == 4096
    assert keys["llama.rope.scaling.type"] == "linear" and keys["llama.rope.scaling.factor"] == 2.0
    assert keys["llama.feed_forward_length"] == 96 and keys["llama.block_count"] == 3
    assert keys["general.file_type"] == 1 and keys["llama.vocab_size"] == 300

    qwen = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
    keys = write_keys(tmp_path, qwen, gguf.MODEL_ARCH.QWEN2)
    assert "qwen2.rope.dimension_count" not in keys and "qwen2.attention.key_length" not in keys
    assert keys["qwen2.embedding_length"] == 64


def test_unsupported_rope_scaling_is_refused(tmp_path):
    config = LlamaConfig(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(UserError, match="rope_type `dynamic` cannot be exported"):
        write_keys(tmp_path, config)


def test_llama3_rope_factors_follow_the_wavelength_bands():
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    rope |= {"original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    config = LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_parameters=rope)
    factors = llama3_rope_factors(config)
    assert factors.shape == (32,) and factors.dtype == np.float32
    for i, factor in enumerate(factors):
        wavelength = 2 * math.pi * 500000.0 ** (2 * i / 64)
        if wavelength < 8192 / 4:  # short wavelengths are untouched
            expected = 1.0
        elif wavelength > 8192 / 1:  # long ones are stretched by the full factor
            expected = 32.0
        else:  # and the band between is interpolated smoothly
            smooth = (8192 / wavelength - 1.0) / (4.0 - 1.0)
            expected = 1 / ((1 - smooth) / 32.0 + smooth)
        assert factor == pytest.approx(expected, rel=1e-5), i
    assert factors[0] == 1.0 and factors[-1] == 32.0


def sentencepiece_style(prepend_scheme="first"):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "\u2581": 4, "a": 5, "b": 6, "ab": 7, "\u2581ab": 8}
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=[("a", "b"), ("\u2581", "ab")], unk_token="<unk>", byte_fallback=True)
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_tokens(["<tool>"])  # a plain added token: user-defined, not control
    return tokenizer


def test_sentencepiece_style_vocab_gets_types_and_merge_rank_scores():
    vocab = read_vocab(sentencepiece_style(), n_vocab=12)
    assert vocab.model == "llama" and vocab.merges is None and vocab.pre is None
    assert vocab.tokens[:10] == ["<unk>", "<s>", "</s>", "<0x41>", "\u2581", "a", "b", "ab", "\u2581ab", "<tool>"]
    assert vocab.tokens[10:] == ["[PAD10]", "[PAD11]"]
    T = gguf.TokenType
    assert vocab.types == [T.UNKNOWN, T.CONTROL, T.CONTROL, T.BYTE] + [T.NORMAL] * 5 + [T.USER_DEFINED] + [T.UNUSED] * 2
    # "ab" is merge 0 and "▁ab" merge 1; tokens no merge makes rank below both, in id order.
    assert vocab.scores[7] == 0.0 and vocab.scores[8] == -1.0
    assert vocab.scores[4:7] == [-2.0 - 4, -2.0 - 5, -2.0 - 6] and vocab.scores[:4] == [0.0] * 4
    assert vocab.special_ids == {"bos": 1, "eos": 2, "unk": 0}
    assert vocab.add_space_prefix is True and not vocab.add_bos and not vocab.add_eos
    assert read_vocab(sentencepiece_style("never"), n_vocab=10).add_space_prefix is False


def test_vocab_larger_than_the_model_is_refused():
    with pytest.raises(UserError, match="embedding rows"):
        read_vocab(build_tokenizer(), n_vocab=100)


def test_pre_tokenizer_names(caplog):
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    split = {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    assert _pre_tokenizer_name({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}) == "gpt-2"
    assert _pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split, byte_level]}) == "qwen2"
    odd = {**split, "pattern": {"Regex": r"\w+|\s+"}}
    with caplog.at_level(logging.WARNING):
        assert _pre_tokenizer_name({"type": "Sequence", "pretokenizers": [odd, byte_level]}) == "default"
    assert "tokenizer.ggml.pre=default" in caplog.text


def test_project_tokenizer_is_byte_level_with_no_merges():
    tokenizer = build_tokenizer()
    vocab = read_vocab(tokenizer, n_vocab=len(tokenizer))
    assert vocab.model == "gpt2" and vocab.pre == "gpt-2" and vocab.merges == []
    assert vocab.types[-4:] == [gguf.TokenType.CONTROL] * 4 and vocab.types[0] == gguf.TokenType.NORMAL
    assert vocab.special_ids == {"eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    assert vocab.chat_template == tokenizer.chat_template
