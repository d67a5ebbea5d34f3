"""Load the tokenizer and model named by `model:`, from the hub, a local directory, or the tiny builder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llm_finetuning.config.schema import ModelConfig
from llm_finetuning.data.templates import BUILTIN_TEMPLATES
from llm_finetuning.env import is_installed
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.models import fast_path, tiny, unsloth_backend

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` is bfloat16 on a GPU that supports it, float32 elsewhere (CPU, older GPUs): `fast_path.dtype_choice`."""
    return DTYPES[fast_path.dtype_choice(name, fast_path.capabilities()).value]


def load_attention(config: ModelConfig) -> str | None:
    """The attention to load the model with: the named one, or None (transformers' sdpa) for `auto` and the
    toolkit's own kernels, which `row_attention.prepare_rows` switches on after loading."""
    name = fast_path.ATTENTION_NAMES.get(config.attn_implementation, config.attn_implementation)
    if config.attn_implementation == "auto" or name in (fast_path.PER_EXAMPLE_SDPA, fast_path.TORCH_VARLEN):
        return None
    return name


def _check_local(source: str, key: str) -> None:
    """A value written as a path must exist; without this check it would be taken for a hub id."""
    looks_local = source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source
    if looks_local and not Path(source).expanduser().exists():
        raise UserError(f"{key}: local directory `{source}` does not exist.")


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    source = config.tokenizer or (tiny.BUILTIN_TOKENIZER if config.name == "tiny" else config.name)
    if source == tiny.BUILTIN_TOKENIZER:
        return tiny.build_tokenizer()
    _check_local(source, "model.tokenizer" if config.tokenizer else "model.name")
    try:
        return AutoTokenizer.from_pretrained(
            source,
            revision=None if config.tokenizer else config.revision,
            trust_remote_code=config.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Could not load the tokenizer `{source}` (model.tokenizer / model.name): {exc}\n"
            "Give a local directory with tokenizer files, or a hub id reachable from this machine."
        ) from None


@dataclass
class TokenizerChanges:
    """What `prepare_tokenizer` had to add; added tokens mean the model's embeddings must grow."""

    added_tokens: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase, chat_template: str | None, require_template: bool = True
) -> TokenizerChanges:
    """Install the chat template and make sure EOS exists and padding uses a token that is not EOS.

    A pad token equal to EOS is the classic way to train a model that never stops: wherever padding is masked
    out of the loss, EOS is masked with it.
    """
    changes = TokenizerChanges()
    if chat_template is not None:
        builtin = BUILTIN_TEMPLATES.get(chat_template)
        if builtin is not None:
            missing = [t for t in builtin.special_tokens if t not in tokenizer.get_vocab()]
            if missing:
                tokenizer.add_special_tokens({"additional_special_tokens": missing})
                changes.added_tokens += missing
            if builtin.eos_token and tokenizer.eos_token != builtin.eos_token:
                changes.notes.append(f"EOS set to {builtin.eos_token} (ends assistant turns in `{builtin.name}`)")
                tokenizer.eos_token = builtin.eos_token
            tokenizer.chat_template = builtin.jinja
        elif "{{" in chat_template or "{%" in chat_template:
            tokenizer.chat_template = chat_template
        else:
            raise ConfigError(
                f"data.chat_template: `{chat_template}` is neither a built-in template "
                f"({', '.join(BUILTIN_TEMPLATES)}) nor a Jinja template string."
            )
    elif not tokenizer.chat_template and require_template:
        raise ConfigError(
            "The tokenizer has no chat template. Set `data.chat_template` to a built-in template "
            f"({', '.join(BUILTIN_TEMPLATES)}) or to a Jinja template string."
        )
    if tokenizer.eos_token is None:
        raise ConfigError("The tokenizer has no EOS token, so the model could not learn to stop.")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
            changes.notes.append(f"pad token set to {tokenizer.unk_token} (distinct from EOS)")
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            changes.added_tokens.append("<|pad|>")
            changes.notes.append("pad token <|pad|> added (distinct from EOS)")
    for note in changes.notes:
        logger.info("tokenizer: %s", note)
    return changes


def load_model(
    config: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    head: str = "causal_lm",
    max_seq_length: int | None = None,
) -> PreTrainedModel:
    """Load or build the model, grow its embeddings to the tokenizer, and align its special token ids.

    `head="sequence_classification"` loads the same network with a scalar score head (reward models).
    `max_seq_length` (`data.max_length`) is what `model.backend: unsloth` sizes its kernels for; the transformers
    backend does not need it.
    """
    dtype = resolve_dtype(config.dtype)
    if config.backend == "unsloth":
        _check_local(config.name, "model.name")
        model = unsloth_backend.load_model(config, max_seq_length, head)
    elif config.name == "tiny":
        if head != "causal_lm":
            raise ValueError("tiny models are built as causal LMs; save them and load the directory with a head")
        model = tiny.build_model(config.tiny, tokenizer, dtype, load_attention(config))
    else:
        model = _from_pretrained(config, dtype, head)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        logger.warning(
            "The tokenizer has %d tokens but the model's embeddings have %d rows; growing them (new rows are "
            "initialised to the mean embedding).",
            len(tokenizer),
            model.get_input_embeddings().weight.shape[0],
        )
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if getattr(model, "generation_config", None) is not None:  # sequence classifiers have none
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def quantization_config(config: ModelConfig, dtype: torch.dtype) -> BitsAndBytesConfig:
    """bitsandbytes settings for `model.quantization`; compute runs in the model's dtype."""
    if not is_installed("bitsandbytes"):
        raise ConfigError(
            f"model.quantization: {config.quantization} needs bitsandbytes: pip install 'llm-finetuning[quantization]'"
        )
    if config.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quantization,
        bnb_4bit_use_double_quant=config.double_quantization,
        bnb_4bit_compute_dtype=dtype,
    )


def is_quantized(model: PreTrainedModel) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _from_pretrained(config: ModelConfig, dtype: torch.dtype, head: str = "causal_lm") -> PreTrainedModel:
    kwargs: dict = {
        "revision": config.revision,
        "dtype": dtype,
        "trust_remote_code": config.trust_remote_code,
        "use_safetensors": None if config.allow_unsafe_weights else True,
    }
    if load_attention(config) is not None:
        kwargs["attn_implementation"] = load_attention(config)
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
    if config.quantization != "none":
        kwargs["quantization_config"] = quantization_config(config, dtype)
    _check_local(config.name, "model.name")
    model_class = AutoModelForCausalLM
    if head == "sequence_classification":
        model_class, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    try:
        return model_class.from_pretrained(config.name, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        hint = ""
        if "safetensors" in str(exc).lower() and not config.allow_unsafe_weights:
            hint = (
                "\nOnly safetensors weights are loaded by default. If you trust this checkpoint's pickle `.bin` "
                "files, set `model.allow_unsafe_weights: true`."
            )
        raise UserError(f"Could not load the model `{config.name}` (model.name): {exc}{hint}") from None
