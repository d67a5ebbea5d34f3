"""`llmft export --format gguf`: the file reads back with the gguf library, transformers loads it with the source
model's logits and the source tokenizer's ids, and the chat template travels with it.

Logit tolerances (relative Frobenius error ||gguf - source|| / ||source|| on random tiny models whose weights are
N(0, 0.02)): f32 is bit-exact (the loader dequantizes to f32, nothing is rounded). f16 rounds each weight with a
relative error of at most 2^-11 = 4.9e-4 and bf16 at most 2^-8 = 3.9e-3; the errors of many weights average
out, measured 3.5e-4..4.3e-4 (f16) and 2.8e-3..3.3e-3 (bf16), so the bounds are 4x the unit roundoff. Q8_0
stores each block of 32 weights as int8 times one f16 scale (absmax / 127): a weight moves by up to half a step,
about 1/254 of its block's largest value, i.e. roughly 0.5% of a typical weight; measured 0.9e-2..1.0e-2 through
two layers and the head, bound 4e-2. Each format must also be less exact than the next more precise one, so a
file that silently wrote f32 everywhere would fail.
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, Qwen2Config
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config import Config
from llm_finetuning.errors import UserError
from llm_finetuning.export.gguf import export_gguf
from llm_finetuning.models.tiny import build_tokenizer
from llm_finetuning.train import train
from tests.conftest import shared, tiny_config

pytestmark = pytest.mark.e2e

CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "mistral": "llama"}  # llama.cpp runs Mistral as llama
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
BOUND = {"f32": 0.0, "f16": 2e-3, "bf16": 1.5e-2, "q8_0": 4e-2}
TEXTS = [
    "Hello world",
    "  leading spaces,\ttabs\n\nand newlines   ",
    "Ünïcödé 日本語 🙂 naïve café",
    "numbers 12345 and 3.14159, don't stop",
    "<|im_start|>user\nhi<|im_end|>",
    "[INST] What is 2+2? [/INST]",
]
MESSAGES = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


def build_model(arch, tokenizer, tied):
    config = CONFIGS[arch](
        vocab_size=len(tokenizer),
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPE,
        **({"sliding_window": None} if arch == "mistral" else {}),  # Mistral v0.3 has none
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0; random values make their export observable
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                parameter.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model


def save_source(folder, arch, tokenizer, tied):
    model = build_model(arch, tokenizer, tied)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def relative_error(ours, reference):
    return ((ours - reference).norm() / reference.norm()).item()


def fields(path):
    reader = gguf.GGUFReader(path)
    return reader, {key: field.contents() for key, field in reader.fields.items()}


# --- every architecture x every outtype, on the project's small byte-level tokenizer ------------------------


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory):
    sources = {}
    for arch in CONFIGS:
        folder = tmp_path_factory.mktemp(f"src-{arch}")
        sources[arch] = folder, save_source(folder, arch, build_tokenizer(), tied=arch == "qwen2")
    return sources


@pytest.fixture(scope="module")
def measured():
    return {}


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_gguf_reads_back_and_gives_the_source_logits(tiny_sources, measured, tmp_path, arch, outtype):
    folder, model = tiny_sources[arch]
    path = export_gguf(folder, tmp_path / "out", outtype)
    assert path == tmp_path / "out" / f"{folder.name}-{outtype}.gguf" and not list(path.parent.glob("*.part"))

    reader, kv = fields(path)
    config = model.config
    assert kv["general.architecture"] == GGUF_ARCH[arch] and kv["general.name"] == folder.name
    prefix = GGUF_ARCH[arch]
    assert kv[f"{prefix}.block_count"] == 2 and kv[f"{prefix}.embedding_length"] == 64
    assert kv[f"{prefix}.feed_forward_length"] == 128
    assert kv[f"{prefix}.context_length"] == config.max_position_embeddings
    assert kv[f"{prefix}.attention.head_count"] == 4 and kv[f"{prefix}.attention.head_count_kv"] == 2
    assert kv[f"{prefix}.rope.freq_base"] == config.rope_parameters["rope_theta"]
    assert kv[f"{prefix}.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    assert kv[f"{prefix}.vocab_size"] == len(build_tokenizer())
    assert kv["general.file_type"] == {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[outtype]

    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    weight_type = outtype.upper()
    assert "output.weight" not in types if arch == "qwen2" else types["output.weight"] == weight_type  # tied head
    assert types["token_embd.weight"] == weight_type and types["blk.1.ffn_down.weight"] == weight_type
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    if arch == "qwen2":
        assert types["blk.0.attn_q.bias"] == types["blk.1.attn_v.bias"] == "F32"
    assert len(types) == len([n for n in model.state_dict() if n != "lm_head.weight" or arch != "qwen2"])

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    assert loaded.config.tie_word_embeddings == (arch == "qwen2")
    ids = [[5, 17, 42, 99, 7, 3, 250, 8, 120, 64, 200, 11], [258, 84, 82, 68, 81, 198, 71, 72, 259, 198, 32, 77]]
    reference, ours = logits(model, ids), logits(loaded, ids)
    error = relative_error(ours, reference)
    measured[arch, outtype] = error
    if outtype == "f32":
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    else:
        assert 0 < error < BOUND[outtype], error
    previous = {"bf16": "f16", "q8_0": "f16", "f16": "f32"}.get(outtype)
    if (arch, previous) in measured:
        assert measured[arch, previous] < error


# --- real tokenizers: GPT-2 and Qwen2 byte-level BPE, Mistral's SentencePiece BPE ---------------------------

TOKENIZER_CASES = [("llama", "gpt2"), ("qwen2", "qwen2"), ("mistral", "mistral-7b-v0.3")]


def export_real(arch, name, folder):
    """A random model of `arch` with the real tokenizer `name` (and a chat template), exported to q8_0."""
    tokenizer = AutoTokenizer.from_pretrained(shared(f"tokenizers/{name}"))
    if tokenizer.chat_template is None:  # GPT-2 has none; the template a run trained with must travel
        tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    model = save_source(folder, arch, tokenizer, tied=arch == "qwen2")
    return tokenizer, model, export_gguf(folder, folder / "gguf", "q8_0")


@pytest.fixture(scope="module", params=TOKENIZER_CASES, ids=[case[1] for case in TOKENIZER_CASES])
def real(request, tmp_path_factory):
    arch, name = request.param
    tokenizer, model, path = export_real(arch, name, tmp_path_factory.mktemp(f"real-{name}"))
    reader, kv = fields(path)
    return {"arch": arch, "name": name, "tokenizer": tokenizer, "model": model, "path": path, "kv": kv}


def test_tokenizer_metadata_is_embedded(real):
    kv, tokenizer = real["kv"], real["tokenizer"]
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    assert kv["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    types = kv["tokenizer.ggml.token_type"]
    assert kv["tokenizer.chat_template"] == tokenizer.chat_template
    assert kv["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    if real["name"] == "mistral-7b-v0.3":  # SentencePiece: scores, byte tokens, <unk>, BOS added
        assert kv["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in kv
        assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.unknown_token_id"]) == (1, 0)
        assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is False
        assert kv["tokenizer.ggml.add_space_prefix"] is True
        assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[3] == gguf.TokenType.CONTROL
        assert types[tokenizer.convert_tokens_to_ids("<0x0A>")] == gguf.TokenType.BYTE
        first_merge = merges[0].replace(" ", "")  # merge number 0 scores highest
        scores = kv["tokenizer.ggml.scores"]
        assert scores[tokenizer.convert_tokens_to_ids(first_merge)] == 0.0
        assert max(s for s, t in zip(scores, types, strict=True) if t == gguf.TokenType.NORMAL) == 0.0
    else:  # byte-level BPE: merges and the pre-tokenizer's name
        assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.merges"] == merges
        assert kv["tokenizer.ggml.pre"] == {"gpt2": "gpt-2", "qwen2": "qwen2"}[real["name"]]
        assert kv["tokenizer.ggml.add_bos_token"] is False
        specials = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
        assert {types[i] for i in specials} == {gguf.TokenType.CONTROL}
        assert types[0] == gguf.TokenType.NORMAL
    if real["name"] == "qwen2":
        assert kv["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id == 151643
        assert "tokenizer.ggml.bos_token_id" not in kv


def test_transformers_tokenizer_from_gguf_encodes_like_the_source(real):
    tokenizer, path = real["tokenizer"], real["path"]
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"], text
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.apply_chat_template(MESSAGES, tokenize=False) == tokenizer.apply_chat_template(
        MESSAGES, tokenize=False
    )


def test_large_vocabulary_q8_0_model_loads_with_the_source_logits(real):
    if real["name"] != "mistral-7b-v0.3":  # one large vocabulary is enough; each costs seconds to read back
        pytest.skip("the weights of every architecture are compared above; one large vocabulary is loaded here")
    path, model = real["path"], real["model"]
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    ids = [real["tokenizer"](TEXTS[2] + TEXTS[3])["input_ids"][:16]]
    assert relative_error(logits(loaded, ids), logits(model, ids)) < BOUND["q8_0"]


# --- a LoRA run, end to end through the CLI ------------------------------------------------------------------


def test_lora_run_exports_through_the_cli_with_the_merged_logits(tmp_path, write_jsonl, qa_rows):
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run"))
    assert train(config).status == "completed"
    run = tmp_path / "run"
    outcome = CliRunner().invoke(app, ["export", str(run), "--format", "gguf", "--outtype", "q8_0"])
    assert outcome.exit_code == 0, outcome.output
    path = run / "export-gguf" / "run-q8_0.gguf"
    assert path.is_file() and "exported to" in outcome.output

    _, kv = fields(path)
    final_tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert kv["tokenizer.chat_template"] == final_tokenizer.chat_template
    assert "<|im_start|>" in kv["tokenizer.chat_template"]
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.merges"] == []  # byte tokens only

    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()  # written by the export
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    prompt = final_tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    ids = [final_tokenizer(prompt)["input_ids"]]
    base_path = json.loads((run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path).eval()
    error = relative_error(logits(loaded, ids), logits(merged, ids))
    assert error < BOUND["q8_0"]  # measured 0.7%
    assert relative_error(logits(base, ids), logits(merged, ids)) > 10 * error  # the adapter is in the file (94%)
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert loaded_tokenizer("Spell alpha!")["input_ids"] == final_tokenizer("Spell alpha!")["input_ids"]

    again = CliRunner().invoke(app, ["export", str(run), "--format", "gguf"])
    assert again.exit_code == 2 and "not empty" in again.output


# --- clear errors ----------------------------------------------------------------------------------------------


def test_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path):
    from transformers import GPT2Config

    tokenizer = build_tokenizer()
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    outcome = CliRunner().invoke(app, ["export", str(tmp_path / "gpt2"), "--format", "gguf"])
    assert outcome.exit_code == 2
    assert "GPT2LMHeadModel" in outcome.output
    assert "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM" in outcome.output
    assert not (tmp_path / "gpt2" / "export-gguf").exists() or not any((tmp_path / "gpt2" / "export-gguf").iterdir())


def test_bad_outtype_non_empty_destination_pickle_weights_and_non_model_folders(tiny_sources, tmp_path):
    folder = tiny_sources["llama"][0]
    bad = CliRunner().invoke(app, ["export", str(folder), "--format", "gguf", "--outtype", "q4_k"])
    assert bad.exit_code == 2 and "choose one of f16, bf16, q8_0, f32" in bad.output

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    outcome = CliRunner().invoke(app, ["export", str(folder), "--format", "gguf", "--output", str(busy)])
    assert outcome.exit_code == 2 and "not empty" in outcome.output and (busy / "keep.txt").read_text() == "mine"

    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    outcome = CliRunner().invoke(app, ["export", str(pickled), "--format", "gguf", "--output", str(tmp_path / "p")])
    assert outcome.exit_code == 2 and "pytorch_model.bin" in outcome.output and "safe_serialization" in outcome.output

    outcome = CliRunner().invoke(app, ["export", str(busy), "--format", "gguf", "--output", str(tmp_path / "q")])
    assert outcome.exit_code == 2 and "neither a completed run directory" in outcome.output


def test_unknown_tensor_is_refused_and_leaves_no_destination(tiny_sources, tmp_path):
    from safetensors.torch import load_file, save_file

    extra = tmp_path / "extra"
    shutil.copytree(tiny_sources["llama"][0], extra)
    tensors = load_file(extra / "model.safetensors")
    save_file({**tensors, "model.value_head.weight": torch.zeros(1, 64)}, extra / "model.safetensors")
    with pytest.raises(UserError, match="tensor `model.value_head.weight` has no GGUF name"):
        export_gguf(extra, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()


def test_vocabulary_padding_rows_are_unused_tokens(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model("llama", tokenizer, tied=False)
    model.resize_token_embeddings(len(tokenizer) + 8)  # e.g. padded to a multiple for speed
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    _, kv = fields(export_gguf(tmp_path / "src", tmp_path / "out", "f16"))
    assert len(kv["tokenizer.ggml.tokens"]) == kv["llama.vocab_size"] == len(tokenizer) + 8
    assert kv["tokenizer.ggml.tokens"][-1] == f"[PAD{len(tokenizer) + 7}]"
    assert kv["tokenizer.ggml.token_type"][-8:] == [gguf.TokenType.UNUSED] * 8
    assert np.array_equal(kv["tokenizer.ggml.token_type"][:3], [gguf.TokenType.NORMAL] * 3)


def test_llama3_rope_scaling_is_written_as_rope_freqs(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model("llama", tokenizer, tied=True)
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    model.config.rope_parameters = rope | {"original_max_position_embeddings": 64, "rope_theta": 10000.0}
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    reader, kv = fields(export_gguf(tmp_path / "src", tmp_path / "out", "q8_0"))
    freqs = next(tensor for tensor in reader.tensors if tensor.name == "rope_freqs.weight")
    assert freqs.tensor_type.name == "F32" and freqs.data.tolist()[0] == 1.0 and freqs.data.tolist()[-1] == 8.0
    assert "output.weight" not in {tensor.name for tensor in reader.tensors}
