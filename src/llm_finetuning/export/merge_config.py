"""The YAML config of `llmft merge-models`: which models, which method, and each method's options.

A file in mergekit's own layout (`merge_method:`, `models[].parameters`, ...) is read too: `mergekit_config`
turns it into this schema first, so every option is described here once.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator, model_validator

from llm_finetuning.config.base import Section
from llm_finetuning.config.errors import format_validation_error
from llm_finetuning.config.loading import load_raw
from llm_finetuning.errors import ConfigError
from llm_finetuning.export.task_vectors import METHODS as TASK_VECTOR_METHODS

MergeMethod = Literal[
    "linear",
    "slerp",
    "nuslerp",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "passthrough",
]
NEEDS_BASE = (*TASK_VECTOR_METHODS, "model_stock")
SPARSIFYING = tuple(name for name, method in TASK_VECTOR_METHODS.items() if method.sparsification)
# The options each method reads; setting another is an error (in a mergekit file, a warning: mergekit ignores it).
MODEL_OPTIONS: dict[str, frozenset[str]] = {
    "linear": frozenset({"weight"}),
    "nuslerp": frozenset({"weight"}),
    "task_arithmetic": frozenset({"weight"}),
    **{name: frozenset({"weight", "density"}) for name in ("ties", "dare_ties", "dare_linear")},
    **{name: frozenset({"weight", "density", "gamma"}) for name in ("breadcrumbs", "breadcrumbs_ties")},
    **{name: frozenset({"weight", "density", "epsilon"}) for name in ("della", "della_linear")},
    "passthrough": frozenset({"scale"}),
}
TOP_OPTIONS: dict[str, frozenset[str]] = {
    "linear": frozenset({"weight", "normalize"}),
    "slerp": frozenset({"t", "slerp_mode"}),
    "nuslerp": frozenset({"weight", "row_wise", "flatten"}),
    "model_stock": frozenset({"filter_wise"}),
    **{
        name: MODEL_OPTIONS[name] | {"normalize", "scale"} | ({"rescale"} if name in SPARSIFYING else set())
        for name in TASK_VECTOR_METHODS
    },
}
METHOD_KEYS = ("t", "scale", "normalize", "rescale", "filter_wise", "row_wise", "flatten", "slerp_mode")
PER_MODEL_KEYS = ("weight", "density", "gamma", "epsilon")


class Filtered(Section):
    """One value of a per-tensor option, for the tensors whose name contains `filter`."""

    filter: str | None = None
    """A substring of the tensor name, e.g. `self_attn` or `mlp`; absent or `*` matches every tensor."""
    value: float | list[float]
    """A number, or a gradient list interpolated over the layers (see `Setting`)."""


def _setting(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One clear message for a bad per-tensor option instead of one per member of the union."""
    if isinstance(value, dict):
        value = [value]  # mergekit accepts a single `{filter, value}` too
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            f"expected a number, a list of numbers (a gradient over the layers) or a list of `{{filter, value}}` "
            f"entries; got {value!r}"
        ) from None


Setting = Annotated[float | list[float] | list[Filtered], WrapValidator(_setting)]
"""A per-tensor option: a number; a list of numbers, a gradient interpolated linearly over the layers of a slice
(first value at its first layer, last at its last; non-layer tensors take the first); or a list of `Filtered`
values, the first whose filter matches the tensor name applies."""


class MergeModel(Section):
    """One model to merge, with the options that differ between models."""

    path: str
    """A model directory (config.json and safetensors weights); an llmft run directory or a LoRA adapter
    directory, merged into its base first; `BASE+ADAPTER` as in mergekit; or a Hugging Face model id already in
    the local cache. Relative paths are looked up beside this file, then in the current directory."""
    weight: Setting | None = None
    """Weight of this model (default: the top-level `weight`, else 1)."""
    density: Setting | None = None
    """Fraction of this model's task vector kept (default: the top-level `density`, else 1, nothing dropped)."""
    gamma: Setting | None = None
    """Breadcrumbs: fraction of largest-magnitude entries dropped as outliers (default: top-level, else 0.01)."""
    epsilon: Setting | None = None
    """DELLA: half-width of the keep probabilities around `density` (default: top-level, else 0.15)."""
    scale: Setting | None = None
    """Passthrough: factor applied to this model's tensors, e.g. `[{filter: o_proj, value: 0}, {value: 1}]`."""


class SliceSource(MergeModel):
    """A model's range of layers in one slice."""

    layer_range: tuple[int, int]
    """First layer and one past the last, as in Python: `[0, 16]` is layers 0 to 15."""


class MergeSlice(Section):
    """A run of output layers, merged from a layer range of each source (all ranges of one length)."""

    sources: list[SliceSource] = Field(min_length=1)
    """The models and layer ranges of this slice; with a base model, one of them is the base."""


class MergeConfig(Section):
    """Merge several fine-tuned models of one architecture into one model (docs/merging.md)."""

    method: MergeMethod
    """How to merge: `linear`, `slerp`, `nuslerp`, `model_stock`, `passthrough`, or a task-vector method added to
    `base_model`: `task_arithmetic`, `ties`, `dare_ties`, `dare_linear`, `breadcrumbs`, `breadcrumbs_ties`,
    `della`, `della_linear`. Formulas and defaults are mergekit 0.1.5's."""
    models: list[MergeModel] | None = None
    """The models to merge, all layers of each. Set either `models` or `slices`."""
    slices: list[MergeSlice] | None = None
    """The output model as runs of layers taken from the sources (a frankenmerge with `passthrough`)."""
    base_model: str | None = None
    """The model the task vectors are taken from (task-vector methods and `model_stock` need it, `nuslerp`
    may use it); the same kinds of path as `models[].path`. It may also be listed in `models`."""
    weight: Setting | None = None
    """Default weight of every model (`models[].weight` overrides it); 1 where neither is set."""
    density: Setting | None = None
    """Default fraction of each task vector kept (`models[].density` overrides it); 1 where neither is set."""
    gamma: Setting | None = None
    """Default breadcrumbs outlier fraction (`models[].gamma` overrides it); 0.01 where neither is set."""
    epsilon: Setting | None = None
    """Default DELLA probability half-width (`models[].epsilon` overrides it); 0.15 where neither is set."""
    t: Setting | None = None
    """SLERP position from the first model (0) to the second (1); a gradient list varies it over the layers."""
    slerp_mode: Literal["tensors", "directions"] = "tensors"
    """`tensors` (mergekit's SLERP): the sine weights apply to the tensors. `directions`: they apply to the unit
    directions and the norm is interpolated linearly (llmft's formula before it followed mergekit)."""
    scale: Setting = 1.0
    """Factor (mergekit's `lambda`) applied to the merged task vector before it is added to the base."""
    normalize: bool | None = None
    """Divide by the sum of the weights (of the agreeing models, with sign consensus). Default: true for
    `linear`, `ties` and `della`, false for the other task-vector methods."""
    rescale: bool | None = None
    """Scale each sparsified task vector back to its original L1 norm. Default: true for `dare_*` and
    `della*`, false for `ties` and `breadcrumbs*`."""
    filter_wise: bool = False
    """Model Stock: compute the interpolation ratio per row instead of per tensor."""
    row_wise: bool = False
    """NuSLERP with `flatten: false`: interpolate vectors along the first dimension instead of the last
    (mergekit's `nuslerp_row_wise`)."""
    flatten: bool = True
    """NuSLERP: interpolate each tensor as one flat vector (mergekit's `nuslerp_flatten`)."""
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    """Data type of the saved weights; default: the widest type of the inputs. Arithmetic runs in float32
    (float64 where that is the type), whatever the saved type."""
    seed: int = 0
    """Seed of the random drops of `dare_*` and `della*`: the same seed gives the same model, and the same
    model as `mergekit-yaml --random-seed SEED` (docs/merging.md)."""
    tokenizer_source: str | None = None
    """The tokenizer saved with the merge: `base` (the base or first model's), a model's path, or `union`
    (accepted only where all vocabularies are identical). Default: the base or first model's."""
    max_shard_size: int | str = "5GB"
    """Largest weights file written (bytes, or a size such as `500MB`); larger models are saved in shards."""
    output_dir: str | None = None
    """Directory the merged model is written to (weights, config.json, tokenizer, merge_config.yaml); may be
    given on the command line instead."""

    @model_validator(mode="after")
    def _check_method(self) -> MergeConfig:
        if (self.models is None) == (self.slices is None):
            raise ValueError("set either `models` (whole models) or `slices` (layer ranges), not both or neither")
        self._check_base()
        self._check_counts()
        self._check_options()
        return self

    def _check_base(self) -> None:
        method = self.method
        if method in NEEDS_BASE and self.base_model is None:
            raise ValueError(f"`method: {method}` needs `base_model`, the model the task vectors are taken from")
        if method in ("linear", "slerp", "passthrough") and self.base_model is not None:
            raise ValueError(f"`base_model` is not used by `method: {method}`; remove it")
        if self.slices is not None and self.base_model is not None:
            for i, piece in enumerate(self.slices):
                if self.base_model not in [s.path for s in piece.sources]:
                    raise ValueError(f"`slices.{i}.sources` must include `base_model` with its layer range")

    def _check_counts(self) -> None:
        method = self.method
        groups = [self.models] if self.models is not None else [s.sources for s in self.slices or []]
        for group in groups:
            others = [m for m in group if m.path != self.base_model]
            where = "`models`" if self.models is not None else "each slice's `sources`"
            if method == "slerp" and len(group) != 2:
                raise ValueError(f"`method: slerp` interpolates exactly two {where}; {len(group)} given")
            if method == "nuslerp" and len(others) != 2:
                raise ValueError(f"`method: nuslerp` needs exactly two {where} besides the base; {len(others)} given")
            if method == "linear" and len(group) < 2:
                raise ValueError(f"`method: linear` needs at least two {where}")
            if method == "model_stock" and len(others) < 2:
                raise ValueError(f"`method: model_stock` needs at least two {where} besides `base_model`")
            if method in TASK_VECTOR_METHODS and not others:
                raise ValueError(f"`method: {method}` needs at least one of {where} besides `base_model`")
            if method == "passthrough" and len(group) != 1:
                raise ValueError(f"`method: passthrough` takes exactly one of {where}; {len(group)} given")
        if method == "slerp" and self.t is None:
            raise ValueError("`method: slerp` needs `t` (0 = first model, 1 = second model)")

    def _check_options(self) -> None:
        method = self.method
        allowed = TOP_OPTIONS.get(method, frozenset())
        for key in (*METHOD_KEYS, *PER_MODEL_KEYS):
            if key in self.model_fields_set and key not in allowed:
                raise ValueError(f"`{key}` is not used by `method: {method}`; remove it")
        per_model = MODEL_OPTIONS.get(method, frozenset())
        listed = self.models if self.models is not None else [s for p in self.slices or [] for s in p.sources]
        for model in listed:
            for key in (*PER_MODEL_KEYS, "scale"):
                if key in model.model_fields_set and key not in per_model:
                    raise ValueError(f"`{key}` of model {model.path} is not used by `method: {method}`; remove it")


def setting_at(setting: Setting | None, name: str, position: float) -> float | None:
    """The value of a per-tensor option for tensor `name` at relative layer `position` (0 to 1); None where no
    filter matches. Gradients interpolate as mergekit does, so both give the same number."""
    if setting is None or isinstance(setting, float | int):
        return None if setting is None else float(setting)
    if not setting:
        return None
    if all(isinstance(v, float | int) for v in setting):
        values = [float(v) for v in setting]
        scaled = position * (len(values) - 1)
        low = int(scaled)
        high = min(len(values) - 1, low + 1)
        fraction = scaled - low
        return (1 - fraction) * values[low] + fraction * values[high]
    for item in setting:
        if isinstance(item, Filtered) and (item.filter in (None, "*") or (name and item.filter in name)):
            return setting_at(item.value, name, position)
    return None


def parse_size(value: int | str, key: str = "max_shard_size") -> int:
    """Bytes from `500MB`, `5GB`, `2GiB` or a plain number."""
    if isinstance(value, int):
        return value
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    text = value.strip().upper().replace(" ", "")
    number = text.rstrip("KMGIB")
    try:
        size = int(float(number) * units[text[len(number) :]])
    except (KeyError, ValueError):
        raise ConfigError(f"`{key}: {value}` is not a size; write bytes or e.g. `500MB`, `5GB`") from None
    if size <= 0:
        raise ConfigError(f"`{key}` must be positive; got {value}")
    return size


def resolve_reference(value: str, folder: Path) -> str:
    """A model reference made absolute where it names a local path (beside the config, else in the current
    directory); anything else (a hub id) is kept as written. `BASE+ADAPTER` is resolved part by part."""
    for candidate in (folder / Path(value).expanduser(), Path(value).expanduser()):
        if candidate.exists():
            return str(candidate.resolve())
    if "+" in value:
        return "+".join(resolve_reference(part, folder) for part in value.split("+", 1))
    return value


def resolve_paths(data: dict, folder: Path) -> None:
    """Make the model paths and `output_dir` of a raw native config absolute (they are relative to its file)."""
    for item in data.get("models") or []:
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            item["path"] = resolve_reference(item["path"], folder)
    for piece in data.get("slices") or []:
        for item in piece.get("sources") or [] if isinstance(piece, dict) else []:
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                item["path"] = resolve_reference(item["path"], folder)
    if isinstance(data.get("base_model"), str):
        data["base_model"] = resolve_reference(data["base_model"], folder)
    if isinstance(data.get("tokenizer_source"), str) and data["tokenizer_source"] not in ("base", "union"):
        data["tokenizer_source"] = resolve_reference(data["tokenizer_source"], folder)
    if isinstance(data.get("output_dir"), str):
        data["output_dir"] = str((folder / Path(data["output_dir"]).expanduser()).resolve())


def read_format(path: str | Path) -> Literal["llmft", "mergekit"]:
    """Which layout a merge file is written in: mergekit's has `merge_method`, llmft's `method`."""
    data, _ = load_raw(Path(path).resolve())
    return "mergekit" if "merge_method" in data else "llmft"


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read and validate a merge YAML file, llmft's layout or mergekit's; paths are relative to the file."""
    source = Path(path).resolve()
    if not source.is_file():
        raise ConfigError(f"Merge config not found: {source}")
    data, locations = load_raw(source)
    if "merge_method" in data:
        from llm_finetuning.export.mergekit_config import from_mergekit

        data, locations = from_mergekit(data, locations, source)
    elif "method" not in data:
        close = difflib.get_close_matches("method", list(data), n=1)
        hint = f" (`{close[0]}` is not a key: did you mean `method`?)" if close else ""
        raise ConfigError(f"{source}: no `method` (llmft's layout) or `merge_method` (mergekit's){hint}")
    resolve_paths(data, source.parent)
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, locations, MergeConfig)) from None
