"""A small randomly-initialised model and the project's own tokenizer, for tests and the quickstart.

Both are built in code in well under a second, need no download, and save to the same layout as a hub model,
so everything downstream (training, `final/`, plain transformers loading) is exercised for real.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.data.templates import CHATML

BUILTIN_TOKENIZER = "builtin"
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) with ChatML special tokens and template.

    Byte-level means any text encodes without unknown tokens; no merges keeps it tiny and deterministic.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=1 << 20,
    )
    tokenizer.chat_template = CHATML.jinja
    return tokenizer


def build_model(
    shape: TinyModelConfig,
    tokenizer: PreTrainedTokenizerFast,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A randomly-initialised causal LM of the given shape whose vocabulary matches `tokenizer` (a BERT encoder
    without a head for `architecture: bert`)."""
    if shape.architecture == "bert":
        return _build_encoder(shape, tokenizer, dtype)
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[shape.architecture]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size or 4 * shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads or shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    # Fork the CPU generator only: the init must not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model


def _build_encoder(shape: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, dtype: torch.dtype) -> PreTrainedModel:
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size or 4 * shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model = BertModel(config)
    return model.to(dtype)
