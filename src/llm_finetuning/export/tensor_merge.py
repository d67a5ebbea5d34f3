"""Merge one output tensor: read the method's options for that tensor and call the method."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llm_finetuning.errors import UserError
from llm_finetuning.export import merging, task_vectors
from llm_finetuning.export.merge_config import MergeConfig, MergeModel, setting_at
from llm_finetuning.export.merge_plan import Job

DEFAULTS = {"weight": 1.0, "density": 1.0, "gamma": 0.01, "epsilon": 0.15}


class TensorMerger:
    """The configured method as a function of (job, input tensors); one random generator for the whole merge,
    consumed in the plan's order, so a seed fixes the model."""

    def __init__(self, config: MergeConfig) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)

    def option(self, model: MergeModel, key: str, name: str, position: float) -> float:
        """A per-model option for one tensor: the model's value, else the top-level default, else the method's
        (mergekit's precedence)."""
        for setting in (getattr(model, key), getattr(self.config, key)):
            value = setting_at(setting, name, position)
            if value is not None:
                return value
        return DEFAULTS[key]

    def shared(self, key: str, job: Job) -> float | None:
        return setting_at(getattr(self.config, key), job.output, job.position)

    def __call__(self, job: Job, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        try:
            return self._merge(job, list(tensors))
        except ValueError as exc:
            raise UserError(f"Cannot merge tensor `{job.output}`: {exc}") from None

    def _merge(self, job: Job, tensors: list[torch.Tensor]) -> torch.Tensor:
        config, method = self.config, self.config.method
        models = [model for model, _ in job.inputs]
        names = [name for _, name in job.inputs]
        bases = [i for i, m in enumerate(models) if m.path == config.base_model]
        base = tensors[bases[0]] if bases else None
        others = [i for i in range(len(models)) if i not in bases]

        def per_model(key: str) -> list[float]:
            return [self.option(models[i], key, names[i], job.position) for i in others]

        if method == "linear":
            return merging.linear(tensors, per_model("weight"), config.normalize is not False)
        if method == "slerp":
            t = self.shared("t", job)
            if t is None:
                raise ValueError("no `t` applies to it; end the list of filtered values with a `{value: ...}`")
            slerp = merging.slerp if config.slerp_mode == "tensors" else merging.slerp_directions
            return slerp(tensors[0], tensors[1], t)
        if method == "nuslerp":
            a, b = (tensors[i] for i in others)
            t = merging.nuslerp_t(per_model("weight"))
            return merging.nuslerp(a, b, t, base, row_wise=config.row_wise, flatten=config.flatten)
        if method == "passthrough":
            scale = setting_at(models[0].scale, names[0], job.position)
            return merging.passthrough(tensors[0], scale)
        assert base is not None  # the config check requires a base for the remaining methods
        if method == "model_stock":
            return merging.model_stock(base, [tensors[i] for i in others], filter_wise=config.filter_wise)
        scale = self.shared("scale", job)
        return task_vectors.combine(
            base,
            [tensors[i] for i in others],
            per_model("weight"),
            task_vectors.METHODS[method],
            densities=per_model("density"),
            normalize=config.normalize,
            rescale=config.rescale,
            scale=1.0 if scale is None else scale,
            gammas=per_model("gamma"),
            epsilons=per_model("epsilon"),
            generator=self.generator,
        )
