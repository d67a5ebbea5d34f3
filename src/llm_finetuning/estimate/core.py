"""`estimate(config)`: memory per device, time and cost, and what to change when it does not fit."""

from __future__ import annotations

import gzip
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import UserError
from llm_finetuning.estimate.gpus import GPU, find_gpu, load_table
from llm_finetuning.estimate.memory import Breakdown, breakdown
from llm_finetuning.estimate.plan import Notes, Plan, build_plan
from llm_finetuning.estimate.shapes import ModelShape
from llm_finetuning.estimate.source import load_shape
from llm_finetuning.estimate.suggest import Suggestion, suggest
from llm_finetuning.estimate.throughput import Throughput, examples_per_step, throughput

logger = logging.getLogger(__name__)
DEFAULT_UTILIZATION = 0.35  # model FLOPs utilisation typical of fine-tuning with transformers on one GPU


@dataclass
class GPURow:
    """The config on one GPU of the table: its memory there, whether it fits, and its time and cost."""

    gpu: GPU
    total_bytes: float
    fits: bool
    throughput: Throughput


@dataclass
class Estimate:
    """The result of `estimate`."""

    source: str
    """Where the model's shape came from."""
    shape: ModelShape
    plan: Plan
    memory: Breakdown
    gpu: GPU | None
    table: list[GPU]
    throughput: Throughput | None
    """Time and cost on the chosen GPU (None without `--gpu`; see `by_gpu`)."""
    by_gpu: list[GPURow] = field(default_factory=list)
    """Every GPU of the table (on a GPU estimate)."""
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def notes(self) -> Notes:
        return self.plan.notes

    @property
    def fits(self) -> bool | None:
        """Whether the peak fits the chosen GPU; None when no GPU was chosen."""
        return None if self.gpu is None else self.memory.total <= self.gpu.memory_bytes

    def fitting_gpus(self) -> list[GPU]:
        return [row.gpu for row in self.by_gpu if row.fits]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (bytes as integers)."""
        plan, mem, params = self.plan, self.memory, self.plan.params
        out: dict[str, Any] = {
            "model": {
                "source": self.source,
                "model_type": self.shape.model_type,
                "parameters": params.total,
                "trainable_parameters": params.trainable_count,
            },
            "settings": {
                "method": plan.method,
                "dtype": plan.dtype,
                "quantization": plan.quantization,
                "optimizer": plan.optimizer,
                "sequences_per_micro_batch": plan.sequences,
                "sequence_length": plan.seq_len,
                "gradient_accumulation_steps": plan.accumulation,
                "gradient_checkpointing": plan.checkpointing,
                "gpus": plan.gpus,
                "sharding": plan.sharding,
                "reference_model": plan.reference,
            },
            "memory": {
                "components": {k: int(v) for k, v in mem.components.items()},
                "activations_without_checkpointing": int(mem.activations_by_checkpointing["without"]),
                "activations_with_checkpointing": int(mem.activations_by_checkpointing["with"]),
                "phases": {k: int(v) for k, v in mem.phases.items()},
                "peak_phase": mem.peak_phase,
                "peak_allocated": int(mem.peak_allocated),
                "overhead": int(mem.overhead),
                "total": int(mem.total),
            },
            "gpu": None if self.gpu is None else {"name": self.gpu.name, "memory_bytes": int(self.gpu.memory_bytes)},
            "fits": self.fits,
            "fitting_gpus": [g.name for g in self.fitting_gpus()],
            "suggestions": [
                {
                    "label": s.label,
                    "overrides": s.overrides,
                    "options": s.options,
                    "total": int(s.total_bytes),
                    "fits": s.fits,
                }
                for s in self.suggestions
            ],
            "notes": [{"level": level, "message": m} for level, m in self.notes.items],
        }
        if self.throughput is not None:
            out["throughput"] = _throughput_dict(self.throughput)
        out["by_gpu"] = [
            {"gpu": row.gpu.name, "total": int(row.total_bytes), "fits": row.fits, **_throughput_dict(row.throughput)}
            for row in self.by_gpu
        ]
        return out


def _throughput_dict(t: Throughput) -> dict[str, Any]:
    return {
        "tokens_per_step": t.tokens_per_step,
        "flops_per_step_per_device": t.flops_per_step,
        "seconds_per_step": t.seconds_per_step,
        "generation_seconds_per_step": t.generation_seconds_per_step,
        "utilization": t.utilization,
        "examples": t.examples,
        "steps_per_epoch": t.steps_per_epoch,
        "seconds_per_epoch": t.seconds_per_epoch,
        "usd_per_epoch": t.cost(t.seconds_per_epoch),
        "seconds_per_1k_steps": t.seconds_per_1k_steps,
        "usd_per_1k_steps": t.cost(t.seconds_per_1k_steps),
        "total_steps": t.total_steps,
        "usd_per_hour": t.usd_per_hour,
    }


def count_examples(config: Config, notes: Notes) -> int | None:
    """Rows of the training data when every source is a local JSON Lines file (cheap to count), else None."""
    total = 0
    for source in config.data.train:
        path = Path(source.path) if source.path else None
        if path is None or not path.name.endswith((".jsonl", ".jsonl.gz")) or not path.is_file():
            notes.info(
                f"data.train: examples of {source.label} not counted (only existing local .jsonl files are); "
                "pass --examples N for a time per epoch"
            )
            return None
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            rows = sum(1 for line in handle if line.strip())
        total += min(rows, source.max_samples) if source.max_samples else rows
    if config.data.eval_split:
        total -= math.ceil(total * config.data.eval_split)
    return total


def estimate(
    config: Config,
    *,
    model_config: str | Path | None = None,
    gpu: str | None = None,
    gpus: int = 1,
    sharding: str | None = None,
    gpu_table: str | Path | None = None,
    utilization: float = DEFAULT_UTILIZATION,
    examples: int | None = None,
    avg_tokens: int | None = None,
    device: str = "cuda",
    with_suggestions: bool = True,
    cpu_bf16: bool | None = None,
) -> Estimate:
    """Estimate the memory, time and cost of training `config` on `gpus` devices.

    `gpu` names a row of the GPU table (`gpu_table`, default the shipped `gpus.yaml`); without it, the memory
    is estimated for a bf16-capable GPU and compared with every row. `device="cpu"` estimates the allocated
    memory of a CPU run instead (float32 weights under `model.dtype: auto`, the autocast `auto` resolves to on a
    CPU, the toolkit's plain LM head, no CUDA overhead), which is what the validation benchmark measures;
    `cpu_bf16` says whether that CPU has native bf16 (None: this machine's).
    """
    if device not in ("cuda", "cpu"):
        raise UserError(f"device: `{device}` is not `cuda` or `cpu`.")
    if not 0 < utilization <= 1:
        raise UserError(f"--utilization: must be in (0, 1] (got {utilization}).")
    for name, value in (("--examples", examples), ("--avg-tokens", avg_tokens)):
        if value is not None and value < 1:
            raise UserError(f"{name}: must be a positive number (got {value}).")
    if gpus < 1:
        raise UserError(f"--gpus: must be at least 1 (got {gpus}).")
    table = load_table(gpu_table)
    chosen = find_gpu(gpu, table) if gpu is not None else None
    shape, source = load_shape(config.model, model_config)
    notes = Notes()
    plan = build_plan(
        config, shape, device=device, gpu=chosen, gpus=gpus, sharding=sharding, notes=notes, cpu_bf16=cpu_bf16
    )
    memory = breakdown(plan)
    result = Estimate(source, shape, plan, memory, chosen, table, None)
    if device == "cuda":
        if examples is None:
            examples = count_examples(config, notes)
        if config.data.packing and not avg_tokens and examples:
            notes.info("data.packing: without --avg-tokens each example is assumed to fill a sequence (upper bound)")
        num_generations = getattr(config.method, "num_generations", None)
        per_step = examples_per_step(plan, avg_tokens, config.data.packing, num_generations)
        for row_gpu in table:
            row_plan = plan if row_gpu is chosen else _plan(config, shape, row_gpu, gpus, plan.sharding)
            speed = throughput(
                row_plan,
                row_gpu,
                utilization=utilization,
                examples=examples,
                epochs=config.training.epochs,
                max_steps=config.training.max_steps,
                per_step_examples=per_step,
            )
            total = breakdown(row_plan).total
            result.by_gpu.append(GPURow(row_gpu, total, total <= row_gpu.memory_bytes, speed))
            if row_gpu is chosen:
                result.throughput = speed
    if with_suggestions and chosen is not None and not result.fits:

        def measure(variant: Config, n: int, shard: str) -> float:
            return breakdown(_plan(variant, shape, chosen, n, shard)).total

        result.suggestions = suggest(config, measure, chosen.memory_bytes, table, gpus, plan.sharding)
    return result


def _plan(config: Config, shape: ModelShape, gpu: GPU | None, gpus: int, sharding: str) -> Plan:
    """A what-if plan on a GPU: its notes are collected but not logged."""
    return build_plan(config, shape, device="cuda", gpu=gpu, gpus=gpus, sharding=sharding, notes=Notes(quiet=True))
