"""GRPO: where a step's time goes (generation, rewards, log-probabilities, training) and what batching generation buys.

    .venv/bin/python benchmarks/bench_grpo.py                   # CPU, tiny Llama shape, GSM8K prompts
    .venv/bin/python benchmarks/bench_grpo.py --device cuda --shape llama-3.2-1b   # adds the vLLM scenario

Every scenario is `llmft train` with `method: grpo` (TRL's GRPOTrainer) on GSM8K prompts from ../shared/data, with
the toolkit's math rewards. Each optimizer step scores `batch x accumulation` completions (`num_generations` per
prompt). Scenarios:
- `gen-per-micro-batch` (baseline): one `generate` call per micro-batch (TRL `steps_per_generation: 1`);
- `gen-batched`: the toolkit's default, one `generate` call for the whole step's completions;
- `gen-static`: `gen-batched` with `method.generation_cache: static` (a static KV cache; compiled decoding on a GPU);
- `gen-merged` / `gen-static-merged`: `gen-batched` / `gen-static` sampling from merged LoRA weights
  (`method.generation_weights: merged`: one plain matmul per adapted layer instead of base + adapter);
- `gen-vllm`: completions from vLLM colocated in the process (`method.generation_backend: vllm`; CUDA + vllm only).

- `trl-fused-head`: `gen-batched` with TRL's own LM head instead of the toolkit's plain one (CPU).

The split comes from TRL's own profiling spans (`transformers.generate`, `vLLM.generate`, the reward functions,
`_get_per_token_logps_and_entropies`), summed per optimizer step; training is the step minus `_prepare_inputs`
(generation, scoring and the no-gradient log-probabilities). Medians over the measured steps after warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import statistics
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from bench_train import REPO, SHAPES, SHARED, TOKENIZER, load_tokenizer, model_dir  # noqa: E402

GENERATE_SPANS = ("transformers.generate", "transformers.generate_batch", "vLLM.generate")


class PhaseMeter(harness.StepMeter):
    """StepMeter that also sums TRL's profiling spans per optimizer step."""

    def __init__(self, warmup: int, pad_token_id: int | None = None) -> None:
        super().__init__(warmup, pad_token_id)
        self.phases: list[dict[str, float]] = []
        self._open: dict[str, float] = defaultdict(float)

    def add(self, name: str, seconds: float) -> None:
        self._open[name.split(".", 1)[1] if "." in name else name] += seconds

    def record(self) -> None:
        super().record()
        self.phases.append(dict(self._open))
        self._open.clear()

    def split(self) -> dict[str, float]:
        """Median seconds per step of each phase over the measured steps."""
        steps = self.steps[self.warmup :]
        phases = self.phases[self.warmup :]
        rows = []
        for step, spans in zip(steps, phases, strict=True):
            generate = sum(v for k, v in spans.items() if k in GENERATE_SPANS)
            prepare = spans.get("_prepare_inputs", 0.0)
            logps = spans.get("_get_per_token_logps_and_entropies", 0.0)
            rewards = sum(v for k, v in spans.items() if k.startswith("reward") or k == "_calculate_rewards")
            rows.append(
                {
                    "step": step["seconds"],
                    "generation": generate,
                    "rewards": spans.get("_calculate_rewards", rewards),
                    "log_probs_no_grad": max(prepare - generate - spans.get("_calculate_rewards", 0.0), 0.0),
                    "training": step["seconds"] - prepare,
                    "log_probs_all": logps,
                }
            )
        return {key: statistics.median(r[key] for r in rows) for key in rows[0]} if rows else {}


def install_span_hook(meter: PhaseMeter) -> Any:
    """Route TRL's profiling spans to the meter (TRL only sends them to wandb/mlflow/trackio itself)."""
    from trl.extras.profiling import ProfilingContext

    original = ProfilingContext._log_metrics

    def log(self: Any, duration: float) -> None:
        meter.add(self.name, duration)
        original(self, duration)

    ProfilingContext._log_metrics = log
    return lambda: setattr(ProfilingContext, "_log_metrics", original)


SCENARIOS = {
    "gen-per-micro-batch": {"steps_per_generation": 1},
    "gen-batched": {},
    "gen-static": {"cache": "static"},
    "gen-merged": {"weights": "merged"},
    "gen-static-merged": {"cache": "static", "weights": "merged"},
    "gen-vllm": {"backend": "vllm"},
    "trl-fused-head": {"trl_head": True},
}
# (group, baseline, scenarios): generation batching and backends; and the toolkit's plain LM head (on by default
# where TRL has no Triton kernel) against TRL's own head.
GROUPS = [
    (
        "generation",
        "gen-per-micro-batch",
        ["gen-per-micro-batch", "gen-batched", "gen-static", "gen-merged", "gen-static-merged", "gen-vllm"],
    ),
    ("lm-head", "trl-fused-head", ["trl-fused-head", "gen-batched"]),
]


def run(name: str, args: argparse.Namespace, model_path: Path, pad: int) -> harness.Result:
    from llm_finetuning.config.schema import Config
    from llm_finetuning.methods import grpo
    from llm_finetuning.train import train

    spec = SCENARIOS[name]
    result = harness.Result(name, "", "", {"shape": args.shape, **spec})
    cuda = args.device.startswith("cuda")
    if spec.get("backend") == "vllm":
        from llm_finetuning.env import is_installed

        if not cuda or not is_installed("vllm"):
            result.skipped = "needs a CUDA GPU and `vllm` installed"
            return result
    method: dict[str, Any] = {
        "name": "grpo",
        "num_generations": args.generations,
        "max_completion_length": args.completion,
        "max_prompt_length": 256,
        "rewards": [{"name": "answer_correctness"}, {"name": "reasoning_tags"}],
    }
    if spec.get("backend"):
        method["generation_backend"] = spec["backend"]
    if spec.get("cache"):
        method["generation_cache"] = spec["cache"]
    if spec.get("weights"):
        method["generation_weights"] = spec["weights"]
    training: dict[str, Any] = {
        "max_steps": args.warmup + args.steps,
        "per_device_batch_size": args.batch,
        "gradient_accumulation_steps": args.accumulation,
        "learning_rate": 1e-5,
        "logging_steps": 10**6,
        "save_steps": 10**6,
        "seed": 0,
    }
    if "steps_per_generation" in spec:
        training["extra"] = {"steps_per_generation": spec["steps_per_generation"]}
    work = Path(tempfile.mkdtemp(prefix=f"bench-grpo-{name}-"))
    config = Config.model_validate(
        {
            "model": {"name": str(model_path), "tokenizer": str(TOKENIZER)},
            "adapter": {"method": "lora", "r": 16, "alpha": 32},
            "data": {"train": {"dataset": "gsm8k", "path": str(SHARED / "gsm8k/train.jsonl"), "max_samples": 400}},
            "method": method,
            "training": training,
            "output_dir": str(work / "run"),
        }
    )
    meter = PhaseMeter(args.warmup, pad)
    restore = install_span_hook(meter)
    plain_head = grpo.use_plain_lm_head
    if spec.get("trl_head"):
        grpo.use_plain_lm_head = lambda *a, **k: False  # TRL's fused head, as without the toolkit
    start = harness.reset_peak_memory()
    try:
        train(config, overwrite=True, callbacks=[meter])
    except Exception as exc:  # keep the other scenarios' figures
        logging.getLogger("bench").exception("scenario %s failed", name)
        result.skipped = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        return result
    finally:
        restore()
        grpo.use_plain_lm_head = plain_head
        shutil.rmtree(work, ignore_errors=True)
    memory = harness.peak_memory()
    completions = args.batch * args.accumulation
    result.figures = harness.summarize(meter.measured())
    result.figures["completions_per_s"] = completions / result.figures["median_step_s"]
    result.figures["split_s"] = meter.split()
    result.memory = {"rss_start": start, **memory, "peak_rss_delta": memory["peak_rss"] - start}
    return result


def split_table(results: list[harness.Result]) -> str:
    lines = [
        "| group | scenario | completions/s | ratio | step s | generation s | rewards s | no-grad log-probs s | "
        "training s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.group} | {r.name} | skipped: {r.skipped} | | | | | | |")
            continue
        f, s = r.figures, r.figures["split_s"]
        value = r.ratio(results, "completions_per_s")
        ratio = "=" if r.name == r.baseline else "-" if value is None else f"{value:.2f}"
        lines.append(
            f"| {r.group} | {r.name} | {f['completions_per_s']:.2f} | {ratio} | {f['median_step_s']:.2f} | "
            f"{s['generation']:.2f} | {s['rewards']:.3f} | {s['log_probs_no_grad']:.2f} | {s['training']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch", type=int, default=8, help="completions per micro-batch")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion", type=int, default=64, help="max completion tokens")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run (default: every group's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    cuda = args.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(args.threads or 1)
    tokenizer = load_tokenizer()
    cache = Path(tempfile.gettempdir()) / "llmft-bench-models"
    path = model_dir(args.shape, tokenizer, torch.bfloat16 if cuda else torch.float32, cache)
    info = harness.machine()
    print(harness.machine_line(info))
    measured = {}
    groups = [(g, b, [n for n in names if not args.only or n in args.only]) for g, b, names in GROUPS]
    groups = [(g, b, names) for g, b, names in groups if names]
    for name in dict.fromkeys(n for _, _, names in groups for n in names):
        measured[name] = run(name, args, path, tokenizer.pad_token_id)
        status = measured[name].skipped or f"{measured[name].figures['completions_per_s']:.2f} completions/s"
        print(f"  {name:<22} {status}", flush=True)
    results = [
        dataclasses.replace(measured[name], group=group, baseline=baseline)
        for group, baseline, names in groups
        for name in names
    ]
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    stem = f"grpo-{args.device.split(':')[0]}-{args.shape}"
    setup = {
        "suite": stem,
        "completions_per_step": args.batch * args.accumulation,
        "num_generations": args.generations,
        "max_completion_length": args.completion,
        "warmup": args.warmup,
        "measured_steps": args.steps,
    }
    harness.write_json(args.out / f"{stem}.json", info, results, setup)
    table = split_table(results)
    header = (
        f"{stem}: {args.batch} x {args.accumulation} completions per step, {args.generations} per prompt, up to "
        f"{args.completion} tokens\n\n"
    )
    (args.out / f"{stem}.md").write_text(header + harness.machine_line(info) + "\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
