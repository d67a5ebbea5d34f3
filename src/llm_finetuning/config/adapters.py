"""The `adapter:` section: one class per method, each owning (and validating) its own options."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from llm_finetuning.config.base import Section


class FullAdapter(Section):
    """Full fine-tuning: every parameter of the model trains."""

    method: Literal["full"] = "full"
    """Adapter method."""


class FreezeAdapter(Section):
    """Freeze tuning: the model trains in place, but only the chosen layers and modules."""

    method: Literal["freeze"] = "freeze"
    """Adapter method."""
    layers: int | list[int] = 2
    """Decoder layers that train: a number N trains the last N layers; a list names layer indices (negative
    indices count from the end)."""
    modules: list[str] = Field(default_factory=list)
    """Within the chosen layers, train only submodules whose name contains one of these (e.g. `[mlp]` or
    `[self_attn]`); empty trains the whole layer."""
    extra_modules: list[str] = Field(default_factory=list)
    """Modules outside the decoder layers that also train, by name (e.g. `[embed_tokens, lm_head, norm]`)."""

    @model_validator(mode="after")
    def _some_layers(self) -> FreezeAdapter:
        if isinstance(self.layers, int) and self.layers < 0:
            raise ValueError("`adapter.layers` as a number counts the last layers that train; it must be >= 0")
        if self.layers in (0, []) and not self.extra_modules:
            raise ValueError("nothing would train: set `adapter.layers` or `adapter.extra_modules`")
        return self


class LoraAdapter(Section):
    """LoRA: train low-rank updates to chosen linear layers; the base weights stay frozen."""

    method: Literal["lora"] = "lora"
    """Adapter method."""
    r: int = Field(16, gt=0)
    """Rank of the low-rank update."""
    alpha: float = Field(32, gt=0)
    """Scale of the update (the update is multiplied by alpha / r, or alpha / sqrt(r) with `use_rslora`)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input during training. 0 (the default, as in PEFT) skips drawing a mask and copying
    the input at every adapted layer, about an eighth of a CPU training step on a 100M model; 0.05-0.1 can help
    against overfitting a small dataset."""
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Layers that get an adapter: `all-linear` (every linear layer except the output head) or a list of module
    names such as `[q_proj, v_proj]`."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train along with the adapter."""
    modules_to_save: list[str] = Field(default_factory=list)
    """Modules trained in full and saved next to the adapter (e.g. `[lm_head]`)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(r), which keeps high ranks learning."""
    init: Literal["default", "gaussian", "pissa", "olora"] = "default"
    """Initialisation: `default` (B = 0, so training starts at the base model), `gaussian`, or `pissa` / `olora`,
    which start the adapter from the principal components (SVD) / a QR decomposition of the base weights and
    are converted back to a plain LoRA on the original base when saved."""


class DoraAdapter(LoraAdapter):
    """DoRA: LoRA on the direction of each weight plus a trained magnitude vector."""

    method: Literal["dora"] = "dora"  # type: ignore[assignment]
    """Adapter method."""


class IA3Adapter(Section):
    """IA3: learned vectors that rescale keys, values and feed-forward activations; very few parameters."""

    method: Literal["ia3"] = "ia3"
    """Adapter method."""
    target_modules: Literal["auto"] | list[str] = "auto"
    """Modules whose activations are rescaled; `auto` uses PEFT's choice for the architecture (keys, values
    and the feed-forward down projection)."""
    feedforward_modules: list[str] | None = None
    """Which of `target_modules` are feed-forward layers (their input is scaled instead of their output);
    required when `target_modules` is a list."""
    modules_to_save: list[str] = Field(default_factory=list)
    """Modules trained in full and saved next to the adapter."""

    @model_validator(mode="after")
    def _ff_with_targets(self) -> IA3Adapter:
        if isinstance(self.target_modules, list) and self.feedforward_modules is None:
            raise ValueError("`adapter.feedforward_modules` is required when `adapter.target_modules` is a list")
        if self.target_modules == "auto" and self.feedforward_modules is not None:
            raise ValueError("`adapter.feedforward_modules` needs an explicit `adapter.target_modules` list")
        return self


class PrefixAdapter(Section):
    """Prefix tuning: trained key/value vectors prepended at every layer."""

    method: Literal["prefix"] = "prefix"
    """Adapter method."""
    num_virtual_tokens: int = Field(20, gt=0)
    """Length of the trained prefix."""
    projection: bool = False
    """Produce the prefix through a two-layer MLP (more stable training, more parameters while training)."""
    projection_hidden_size: int | None = Field(None, gt=0)
    """Hidden width of the projection MLP; defaults to the width of the prefix vectors (the key/value width,
    which is smaller than the hidden size in grouped-query attention models)."""

    @model_validator(mode="after")
    def _hidden_needs_projection(self) -> PrefixAdapter:
        if self.projection_hidden_size is not None and not self.projection:
            raise ValueError("`adapter.projection_hidden_size` only applies with `adapter.projection: true`")
        return self


class PromptAdapter(Section):
    """Prompt tuning: trained embeddings prepended to the input."""

    method: Literal["prompt"] = "prompt"
    """Adapter method."""
    num_virtual_tokens: int = Field(20, gt=0)
    """Number of trained prompt embeddings."""
    init: Literal["random", "text"] = "random"
    """Start from random embeddings, or from the embeddings of `init_text`."""
    init_text: str | None = None
    """Text whose token embeddings initialise the prompt (with `init: text`), e.g. `Answer the question:`."""

    @model_validator(mode="after")
    def _text_init(self) -> PromptAdapter:
        if self.init == "text" and not self.init_text:
            raise ValueError("`adapter.init: text` needs `adapter.init_text`")
        if self.init == "random" and self.init_text is not None:
            raise ValueError("`adapter.init_text` only applies with `adapter.init: text`")
        return self


class PTuningAdapter(Section):
    """P-tuning: prompt embeddings produced by a small trained encoder (MLP or LSTM)."""

    method: Literal["p_tuning"] = "p_tuning"
    """Adapter method."""
    num_virtual_tokens: int = Field(20, gt=0)
    """Number of virtual prompt tokens."""
    encoder: Literal["mlp", "lstm"] = "mlp"
    """Prompt encoder architecture."""
    encoder_hidden_size: int | None = Field(None, gt=0)
    """Hidden width of the encoder; defaults to the model's hidden size."""
    encoder_num_layers: int = Field(2, gt=0)
    """Layers of the encoder."""
    encoder_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout inside the encoder."""


ADAPTERS = (
    FullAdapter,
    FreezeAdapter,
    LoraAdapter,
    DoraAdapter,
    IA3Adapter,
    PrefixAdapter,
    PromptAdapter,
    PTuningAdapter,
)
PROMPT_LEARNING = ("prefix", "prompt", "p_tuning")
AnyAdapter = (
    FullAdapter
    | FreezeAdapter
    | LoraAdapter
    | DoraAdapter
    | IA3Adapter
    | PrefixAdapter
    | PromptAdapter
    | PTuningAdapter
)
AdapterConfig = Annotated[AnyAdapter, Field(discriminator="method")]
