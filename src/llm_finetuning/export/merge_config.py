"""The YAML config of `llmft merge-models`: which models, which method, and each method's options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from llm_finetuning.config.base import Section
from llm_finetuning.errors import ConfigError

MergeMethod = Literal["linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
# Methods that add task vectors (model - base) to a base model.
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
DENSITY_METHODS = ("ties", "dare_ties", "dare_linear")


class MergeModel(Section):
    """One model to merge."""

    path: str
    """Local directory of the model (config.json and safetensors weights), e.g. a run's `final/`."""
    weight: float = 1.0
    """Weight of this model in the merge."""


class MergeConfig(Section):
    """Merge several fine-tuned models of one architecture into one model."""

    method: MergeMethod
    """How to merge: `linear` (weighted average), `slerp` (spherical interpolation of two models),
    `task_arithmetic`, `ties`, `dare_ties` or `dare_linear` (task vectors added to `base_model`)."""
    models: list[MergeModel] = Field(min_length=1)
    """The models to merge, each a `{path, weight}`."""
    base_model: str | None = None
    """Directory of the common base the models were fine-tuned from; required by the task-vector methods."""
    t: float | None = Field(None, ge=0, le=1)
    """SLERP position between the first model (0) and the second (1); `slerp` only."""
    density: float | None = Field(None, gt=0, le=1)
    """Fraction of each task vector kept (TIES: largest magnitudes; DARE: random); ties and dare_* only."""
    scale: float = 1.0
    """Factor (lambda) applied to the merged task vector before it is added to the base."""
    normalize: bool = True
    """`linear` only: divide by the sum of the weights (a weighted mean rather than a weighted sum)."""
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    """Data type of the saved weights; defaults to that of the first (or base) model."""
    seed: int = 0
    """Seed of DARE's random drop, so the same config gives the same model."""
    output_dir: str
    """Directory the merged model is written to (weights, config.json, tokenizer, merge_config.yaml)."""

    @model_validator(mode="after")
    def _check_method(self) -> MergeConfig:
        method = self.method
        if method in TASK_VECTOR_METHODS and self.base_model is None:
            raise ValueError(f"`method: {method}` needs `base_model`, the model the task vectors are taken from")
        if method not in TASK_VECTOR_METHODS and self.base_model is not None:
            raise ValueError(f"`base_model` is not used by `method: {method}`; remove it")
        if method == "slerp":
            if len(self.models) != 2:
                raise ValueError(f"`method: slerp` interpolates exactly two `models`; {len(self.models)} given")
            if self.t is None:
                raise ValueError("`method: slerp` needs `t` (0 = first model, 1 = second model)")
        elif self.t is not None:
            raise ValueError(f"`t` is a `method: slerp` option, not of `method: {method}`; remove it")
        if method == "linear" and len(self.models) < 2:
            raise ValueError("`method: linear` needs at least two `models`")
        if method in DENSITY_METHODS and self.density is None:
            raise ValueError(f"`method: {method}` needs `density` (fraction of each task vector kept, in (0, 1])")
        if method not in DENSITY_METHODS and self.density is not None:
            raise ValueError(f"`density` is not used by `method: {method}`; remove it")
        if method in ("ties", "dare_ties") and any(m.weight <= 0 for m in self.models):
            # A negative weight would flip a model's vote in the sign election, which is never what is meant.
            raise ValueError(f"`method: {method}` needs every `models[].weight` > 0")
        return self


def _resolve(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _format(exc: ValidationError, source: Path) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key; valid keys: {', '.join(MergeConfig.model_fields)}"
        elif error["type"] == "missing":
            message = "required key is missing"
        # Whole-config checks have no location; their messages name the keys involved.
        lines.append(f"  {key}: {message}" if key else f"  {message}")
    return "\n".join([f"{source}: invalid merge config:", *lines])


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read and validate a merge YAML file; model paths and `output_dir` are relative to the file."""
    source = Path(path).resolve()
    if not source.is_file():
        raise ConfigError(f"Merge config not found: {source}")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (method, models, output_dir, ...)")
    folder = source.parent
    for item in data.get("models") or []:
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            item["path"] = _resolve(item["path"], folder)
    for key in ("base_model", "output_dir"):
        if isinstance(data.get(key), str):
            data[key] = _resolve(data[key], folder)
    try:
        return MergeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None
