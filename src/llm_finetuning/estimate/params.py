"""Which parameters exist and which train, for each `adapter:` method, counted from the model's shape.

The counts match what PEFT builds (the unit tests compare them with PEFT's trainable count): LoRA adds
`r x (in + out)` per adapted linear layer, DoRA also a magnitude vector of `out` values, IA3 one vector per
adapted layer, prompt-learning methods their virtual-token embeddings and encoders. Tensors are kept as
shapes so the optimizer estimate can apply per-tensor rules (8-bit states only for large tensors, Adafactor's
factored moments).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llm_finetuning.config.adapters import (
    AnyAdapter,
    DoraAdapter,
    FreezeAdapter,
    FullAdapter,
    IA3Adapter,
    LoraAdapter,
    PrefixAdapter,
    PromptAdapter,
    PTuningAdapter,
)
from llm_finetuning.errors import ConfigError
from llm_finetuning.estimate.shapes import Linear, ModelShape

Shape = tuple[int, ...]
BASE, ADAPTER, COPY = "base", "adapter", "copy"  # whose tensor: the model's own, new (float32), a module copy

# PEFT's default IA3 targets (peft.utils.constants), for the families the estimate knows.
IA3_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "phi": (["q_proj", "v_proj", "fc2"], ["fc2"]),
    **{t: (["q_proj", "v_proj", "down_proj"], ["down_proj"]) for t in ("gemma", "gemma2", "gemma3_text", "qwen2")},
    "qwen3": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
}


@dataclass
class Params:
    """Parameter counts of the model being trained, per device before any sharding."""

    base: int
    """Parameters of the base model."""
    trainable: list[tuple[Shape, int, str]] = field(default_factory=list)
    """Trainable tensors as (shape, how many, whose): `base` parameters that train, new `adapter` parameters (PEFT
    keeps them in float32), and `copy` for the full module copies of `modules_to_save` (in the base dtype)."""
    adapted: list[tuple[Linear, int]] = field(default_factory=list)
    """Linear layers of each decoder layer that carry a LoRA adapter, with its rank (their inputs are kept)."""
    norms_train: bool = False
    """Whether normalisation weights train (then their normalised input is kept for the backward)."""
    head_trains: bool = False
    """Whether the output layer's weight trains (its gradient is built at the start of the backward)."""
    embedding_trains: bool = False
    """Whether the input embeddings train (their gradient is built at the end of the backward)."""
    virtual_tokens: int = 0
    """Tokens prompt-learning methods prepend to every sequence."""

    def count(self, *kinds: str) -> int:
        """Trainable parameters of the given kinds (all kinds when none is given)."""
        return sum(_numel(shape) * n for shape, n, kind in self.trainable if not kinds or kind in kinds)

    @property
    def trainable_count(self) -> int:
        return self.count()

    @property
    def added(self) -> int:
        """Parameters the adapter adds to the model (LoRA matrices, module copies, prompt encoders)."""
        return self.count(ADAPTER, COPY)

    @property
    def total(self) -> int:
        return self.base + self.added


def _numel(shape: Shape) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


def _module_tensors(linear: Linear) -> list[Shape]:
    return [(linear.out_features, linear.in_features)] + ([(linear.out_features,)] if linear.bias else [])


def _layer_tensors(shape: ModelShape, modules: Iterable[str] | None = None) -> list[Shape]:
    """Tensors of one decoder layer, optionally only of the submodules whose name contains one of `modules`."""
    wanted = list(modules) if modules else None
    out: list[Shape] = []
    for linear in shape.linears:
        parent = (
            "mlp"
            if linear.name in ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2")
            else ("self_attn")
        )
        if wanted is None or any(m in (linear.name, parent) for m in wanted):
            out += _module_tensors(linear)
    for norm in shape.norms:
        parent = "self_attn" if norm.name in ("q_norm", "k_norm") else ""
        if wanted is None or any(m in (norm.name, parent) for m in wanted):
            out += [(norm.size,)] * (2 if norm.bias else 1)
    return out


def _outside_tensors(shape: ModelShape) -> dict[str, list[Shape]]:
    """Trainable-by-name modules outside the decoder layers (the names `extra_modules` and `modules_to_save` use)."""
    h, v = shape.hidden_size, shape.vocab_size
    head: list[Shape] = []
    if shape.head == "sequence_classification":
        head = [(1, h)]
    elif not shape.tie_word_embeddings:
        head = [(v, h)]
    if shape.lm_head_bias and shape.head == "causal_lm":
        head.append((v,))
    return {
        "embed_tokens": [(v, h)],
        "lm_head" if shape.head == "causal_lm" else "score": head,
        shape.final_norm.name: [(h,)] * (2 if shape.final_norm.bias else 1),
    }


def count(shape: ModelShape, adapter: AnyAdapter) -> Params:
    """The parameters of `shape` wrapped with `adapter`, and which of them train."""
    params = Params(base=shape.total_params)
    layers = shape.num_layers
    if isinstance(adapter, FullAdapter):
        params.trainable = [(s, layers, BASE) for s in _layer_tensors(shape)]
        for tensors in _outside_tensors(shape).values():
            params.trainable += [(s, 1, BASE) for s in tensors]
        params.norms_train = params.head_trains = params.embedding_trains = True
    elif isinstance(adapter, FreezeAdapter):
        _count_freeze(shape, adapter, params)
    elif isinstance(adapter, LoraAdapter):
        _count_lora(shape, adapter, params)
    elif isinstance(adapter, IA3Adapter):
        _count_ia3(shape, adapter, params)
    else:
        _count_prompt_learning(shape, adapter, params)
    return params


def _count_freeze(shape: ModelShape, adapter: FreezeAdapter, params: Params) -> None:
    n = shape.num_layers
    if isinstance(adapter.layers, int):
        if adapter.layers > n:
            raise ConfigError(f"adapter.layers: {adapter.layers} exceeds the model's {n} layers")
        chosen = adapter.layers
    else:
        bad = [i for i in adapter.layers if not -n <= i < n]
        if bad:
            raise ConfigError(f"adapter.layers: index {bad[0]} is out of range for {n} layers")
        chosen = len({i % n for i in adapter.layers})
    tensors = _layer_tensors(shape, adapter.modules or None)
    if adapter.modules and not tensors:
        raise ConfigError(f"adapter.modules: no submodule of a decoder layer is named {', '.join(adapter.modules)}")
    params.trainable = [(s, chosen, BASE) for s in tensors] if chosen else []
    outside = _outside_tensors(shape)
    for name in adapter.extra_modules:
        if name not in outside:
            raise ConfigError(f"adapter.extra_modules: `{name}` is not one of {', '.join(outside)}")
        target = "embed_tokens" if name == "lm_head" and shape.tie_word_embeddings else name
        params.trainable += [(s, 1, BASE) for s in outside[target]]
        params.head_trains |= name in ("lm_head", "score") or (name == "embed_tokens" and shape.tie_word_embeddings)
        params.embedding_trains |= target == "embed_tokens"
    params.norms_train = chosen > 0 and (not adapter.modules or any("norm" in m for m in adapter.modules))


def _targets(shape: ModelShape, names: list[str], key: str) -> list[Linear]:
    """Decoder-layer linears named by `names` (PEFT matches the end of the module name)."""
    by_name = {lin.name: lin for lin in shape.linears}
    chosen: list[Linear] = []
    for name in names:
        last = name.split(".")[-1]
        if last in by_name:
            chosen.append(by_name[last])
        elif last not in ("lm_head", "embed_tokens", "score"):
            raise ConfigError(
                f"{key}: no linear layer of this `{shape.model_type}` model is named `{name}`; its layers are "
                f"{', '.join(by_name)} (or use `all-linear`)."
            )
    return list(dict.fromkeys(chosen))


def _count_lora(shape: ModelShape, adapter: LoraAdapter, params: Params) -> None:
    r, h, v = adapter.r, shape.hidden_size, shape.vocab_size
    names = adapter.target_modules
    linears = list(shape.linears) if names == "all-linear" else _targets(shape, names, "adapter.target_modules")
    dora = isinstance(adapter, DoraAdapter)
    for lin in linears:
        pair = [((r, lin.in_features), shape.num_layers, ADAPTER), ((lin.out_features, r), shape.num_layers, ADAPTER)]
        params.trainable += pair + ([((lin.out_features,), shape.num_layers, ADAPTER)] if dora else [])
        params.adapted.append((lin, r))
    if names != "all-linear":
        outside = {n.split(".")[-1] for n in names} & {"lm_head", "embed_tokens"}
        if "lm_head" in outside and shape.head == "causal_lm":  # LoRA on the output layer
            params.trainable += [((r, h), 1, ADAPTER), ((v, r), 1, ADAPTER)] + ([((v,), 1, ADAPTER)] if dora else [])
        if "embed_tokens" in outside:  # PEFT's embedding LoRA: A is (r, vocab), B is (hidden, r)
            params.trainable += [((r, v), 1, ADAPTER), ((h, r), 1, ADAPTER)] + ([((h,), 1, ADAPTER)] if dora else [])
    if adapter.bias != "none":
        pool = linears if adapter.bias == "lora_only" else list(shape.linears)
        params.trainable += [((lin.out_features,), shape.num_layers, BASE) for lin in pool if lin.bias]
        if adapter.bias == "all":  # every bias of the model, the final norm's and the LM head's included
            norm_biases = [(n.size,) for n in shape.norms if n.bias]
            params.trainable += [(s, shape.num_layers, BASE) for s in norm_biases]
            outside = [shape.final_norm.size] if shape.final_norm.bias else []
            outside += [shape.vocab_size] if shape.lm_head_bias and shape.head == "causal_lm" else []
            params.trainable += [((n,), 1, BASE) for n in outside]
    _modules_to_save(shape, adapter.modules_to_save, params)


def _modules_to_save(shape: ModelShape, names: list[str], params: Params) -> None:
    """PEFT trains a full copy of each module in `modules_to_save`; a reward model's `score` is always one."""
    outside = _outside_tensors(shape)
    wanted = list(names) + (["score"] if shape.head == "sequence_classification" and "score" not in names else [])
    for name in wanted:
        tensors = outside.get(name)
        if tensors is None:
            raise ConfigError(f"adapter.modules_to_save: `{name}` is not one of {', '.join(outside)}")
        if name == "lm_head" and shape.tie_word_embeddings:  # the copy holds the shared weight and its own bias
            tensors = outside["embed_tokens"] + tensors
        params.trainable += [(s, 1, COPY) for s in tensors]
        params.head_trains |= name in ("lm_head", "score")


def _count_ia3(shape: ModelShape, adapter: IA3Adapter, params: Params) -> None:
    if adapter.target_modules == "auto":
        if shape.model_type not in IA3_DEFAULTS:
            raise ConfigError(
                f"adapter.target_modules: PEFT has no default IA3 targets for `{shape.model_type}`; list them and "
                "`adapter.feedforward_modules`."
            )
        names, feedforward = IA3_DEFAULTS[shape.model_type]
    else:
        names, feedforward = adapter.target_modules, adapter.feedforward_modules or []
    for lin in _targets(shape, names, "adapter.target_modules"):
        width = lin.in_features if lin.name in feedforward else lin.out_features
        params.trainable.append(((1, width) if lin.name in feedforward else (width, 1), shape.num_layers, ADAPTER))
    _modules_to_save(shape, adapter.modules_to_save, params)


def _count_prompt_learning(shape: ModelShape, adapter: AnyAdapter, params: Params) -> None:
    h, layers = shape.hidden_size, shape.num_layers
    tensors: list[Shape]
    if isinstance(adapter, PrefixAdapter):
        # PEFT sizes the prefix by the key/value width, so grouped-query models get narrower prefixes.
        width, n = shape.kv_width, adapter.num_virtual_tokens
        if adapter.projection:
            hid = adapter.projection_hidden_size or width
            tensors = [(n, width), (hid, width), (hid,), (2 * layers * width, hid), (2 * layers * width,)]
        else:
            tensors = [(n, 2 * layers * width)]
    elif isinstance(adapter, PromptAdapter):
        n = adapter.num_virtual_tokens
        tensors = [(n, h)]
    else:
        assert isinstance(adapter, PTuningAdapter)
        n, hid = adapter.num_virtual_tokens, adapter.encoder_hidden_size or h
        tensors = [(n, h)]
        if adapter.encoder == "mlp":
            tensors += [(hid, h), (hid,), (hid, hid), (hid,), (h, hid), (h,)]
        else:  # a bidirectional LSTM, then a two-layer MLP head
            for layer in range(adapter.encoder_num_layers):
                width = h if layer == 0 else 2 * hid
                tensors += [(4 * hid, width), (4 * hid, hid), (4 * hid,), (4 * hid,)] * 2
            tensors += [(2 * hid, 2 * hid), (2 * hid,), (h, 2 * hid), (h,)]
    params.trainable = [(s, 1, ADAPTER) for s in tensors]
    params.virtual_tokens = 0 if isinstance(adapter, PrefixAdapter) else adapter.num_virtual_tokens
    if shape.head == "sequence_classification":
        _modules_to_save(shape, [], params)
