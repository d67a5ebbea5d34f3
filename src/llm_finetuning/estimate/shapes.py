"""The shape of a decoder-only model, read from its `config.json`, and its parameter count per module.

Only the numbers in `config.json` are needed (no weights, no torch), so a 70B model is described in
microseconds. The counts are exact for the families listed in `FAMILIES`: the unit tests compare them with
`sum(p.numel())` of transformers models built from the same config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from llm_finetuning.errors import UserError
from llm_finetuning.models.logit_config import LOGIT_TRANSFORMS  # config.json keys: such models keep TRL's head

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder layer, named as in transformers (the names LoRA targets)."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class Norm:
    """A normalisation layer: `size` parameters (doubled with a bias) applied to `width` values per token."""

    name: str
    size: int
    width: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.size * (2 if self.bias else 1)


@dataclass(frozen=True)
class Family:
    """What differs between the supported decoder families."""

    qkv_bias: bool = False  # q, k and v projections carry a bias (Qwen2)
    fused_qkv: bool = False  # one `qkv_proj` and one `gate_up_proj` (Phi-3)
    gated_mlp: bool = True  # SwiGLU/GeGLU gate, up and down projections; else fc1 -> activation -> fc2 (Phi)
    layernorm: bool = False  # LayerNorm with a bias instead of RMSNorm (Phi)
    parallel_block: bool = False  # attention and MLP read the same normalised input (Phi)
    sandwich_norms: bool = False  # extra norms before and after the MLP (Gemma 2/3)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys (Qwen3, Gemma 3)
    tied_default: bool = False  # `tie_word_embeddings` when config.json does not say
    window_default: bool = False  # transformers' config sets a sliding window when config.json does not say (Mistral)
    local_layers: bool = False  # some layers attend within a window (Gemma 2/3)
    softcap_default: bool = False  # the logits are soft-capped when config.json does not say (Gemma 2)


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(window_default=True),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qk_norm=True),
    "gemma": Family(tied_default=True),
    "gemma2": Family(sandwich_norms=True, tied_default=True, local_layers=True, softcap_default=True),
    "gemma3_text": Family(sandwich_norms=True, qk_norm=True, tied_default=True, local_layers=True),
    "phi3": Family(fused_qkv=True),
    "phi": Family(gated_mlp=False, layernorm=True, parallel_block=True),
}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")


@dataclass(frozen=True)
class ModelShape:
    """Everything the estimate needs to know about the network."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    linears: tuple[Linear, ...]
    norms: tuple[Norm, ...]
    final_norm: Norm
    gated_mlp: bool = True
    lm_head_bias: bool = False
    head: str = "causal_lm"  # or "sequence_classification" (reward models: a 1-output `score` layer)
    per_example_attention: bool = True
    """Every layer attends causally over the whole sequence without soft-capping, so packed and padding-free rows
    can be attended per example (`models/varlen_attention.py`)."""
    plain_head: bool = True
    """The logits are neither soft-capped nor scaled, so the toolkit's plain LM head can replace TRL's on CPU."""

    # ------------------------------------------------------------------------------------------ counts
    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The output layer's own parameters: 0 for a tied LM head, `hidden` for a reward model's score."""
        if self.head == "sequence_classification":
            return self.hidden_size
        if self.tie_word_embeddings:
            return self.vocab_size if self.lm_head_bias else 0
        return self.vocab_size * self.hidden_size + (self.vocab_size if self.lm_head_bias else 0)

    @property
    def layer_linear_params(self) -> int:
        return sum(lin.params for lin in self.linears)

    @property
    def layer_params(self) -> int:
        return self.layer_linear_params + sum(n.params for n in self.norms)

    @property
    def total_params(self) -> int:
        return self.embedding_params + self.num_layers * self.layer_params + self.final_norm.params + self.head_params

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a matrix multiply per token (FLOPs): the layers' linears and the head."""
        out = self.vocab_size * self.hidden_size if self.head == "causal_lm" else self.hidden_size
        return self.num_layers * self.layer_linear_params + out

    def as_reward_model(self) -> ModelShape:
        """The same network with a scalar `score` head instead of the LM head."""
        return replace(self, head="sequence_classification", lm_head_bias=False)

    def linear(self, name: str) -> Linear:
        return next(lin for lin in self.linears if lin.name == name)


# ------------------------------------------------------------------------------------------- building
def _require(config: dict[str, Any], key: str, source: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{source}: `{key}` is missing or not a positive integer; the estimate needs it.")
    return value


def shape_from_config(config: dict[str, Any], source: str = "config.json") -> ModelShape:
    """Build the shape from a model's `config.json` mapping (a Llama/Mistral/Qwen/Gemma/Phi decoder)."""
    text_config = config.get("text_config")
    if isinstance(text_config, dict) and "hidden_size" not in config:
        # Multimodal wrappers keep the language model's shape here; the vision tower is not estimated.
        logger.warning("%s: using `text_config` (the language model); a vision tower is not counted", source)
        config = {**text_config, "model_type": text_config.get("model_type", config.get("model_type"))}
    model_type = str(config.get("model_type", ""))
    moe = [k for k in MOE_KEYS if isinstance(config.get(k), int) and config[k] > 1]
    if moe:
        raise UserError(
            f"{source}: `{moe[0]}` marks a mixture-of-experts model (`{model_type}`), which the estimate does not "
            "model yet; estimate a dense model of the same width instead."
        )
    family = FAMILIES.get(model_type)
    if family is None:
        logger.warning(
            "%s: model_type `%s` is not one of %s; counting it as a Llama-style decoder (counts may be off)",
            source,
            model_type or "(missing)",
            ", ".join(FAMILIES),
        )
        family = Family()
    h = _require(config, "hidden_size", source)
    layers = _require(config, "num_hidden_layers", source)
    heads = _require(config, "num_attention_heads", source)
    vocab = _require(config, "vocab_size", source)
    inter = _require(config, "intermediate_size", source)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    if heads % kv_heads:
        raise UserError(f"{source}: `num_attention_heads` ({heads}) is not a multiple of `num_key_value_heads`.")
    q, kv = heads * head_dim, kv_heads * head_dim
    attn_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    if family.fused_qkv:
        linears = [Linear("qkv_proj", h, q + 2 * kv), Linear("o_proj", q, h)]
    elif not family.gated_mlp:  # Phi: every projection has a bias; the output projection is `dense`
        linears = [Linear(n, h, w, True) for n, w in (("q_proj", q), ("k_proj", kv), ("v_proj", kv))]
        linears.append(Linear("dense", q, h, True))
    else:
        bias = family.qkv_bias or attn_bias
        linears = [Linear(n, h, w, bias) for n, w in (("q_proj", q), ("k_proj", kv), ("v_proj", kv))]
        linears.append(Linear("o_proj", q, h, attn_bias))
    if family.fused_qkv:
        linears += [Linear("gate_up_proj", h, 2 * inter), Linear("down_proj", inter, h)]
    elif family.gated_mlp:
        linears += [Linear(n, h, inter, mlp_bias) for n in ("gate_proj", "up_proj")]
        linears.append(Linear("down_proj", inter, h, mlp_bias))
    else:
        linears += [Linear("fc1", h, inter, True), Linear("fc2", inter, h, True)]
    ln = family.layernorm
    norms = [Norm("input_layernorm", h, h, ln)]
    if not family.parallel_block:
        norms.append(Norm("post_attention_layernorm", h, h, ln))
    if family.sandwich_norms:
        norms += [Norm("pre_feedforward_layernorm", h, h), Norm("post_feedforward_layernorm", h, h)]
    if family.qk_norm or config.get("qk_layernorm"):
        norms += [Norm("q_norm", head_dim, q, ln), Norm("k_norm", head_dim, kv, ln)]
    tied = config.get("tie_word_embeddings")
    window = config.get("sliding_window", 4096 if family.window_default else None)
    windowed = window is not None and config.get("use_sliding_window", True)
    local = family.local_layers or any(kind != "full_attention" for kind in config.get("layer_types") or [])
    softcap = config.get("final_logit_softcapping", 30.0 if family.softcap_default else None)
    return ModelShape(
        model_type=model_type or "llama",
        vocab_size=vocab,
        hidden_size=h,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        tie_word_embeddings=family.tied_default if tied is None else bool(tied),
        max_position_embeddings=int(config.get("max_position_embeddings") or 0),
        linears=tuple(linears),
        norms=tuple(norms),
        final_norm=Norm("final_layernorm" if family.layernorm else "norm", h, h, ln),
        gated_mlp=family.gated_mlp,
        lm_head_bias=not family.gated_mlp,  # Phi's LM head has a bias
        per_example_attention=not (windowed or local or config.get("attn_logit_softcapping")),
        plain_head=softcap is None and all(config.get(key) is None for key in LOGIT_TRANSFORMS[1:]),
    )
