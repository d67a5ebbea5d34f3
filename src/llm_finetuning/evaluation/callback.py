"""The `eval:` section during and after training: tasks every `eval.tasks_every_steps` steps (a transformers
callback) and, once `final/` is saved, the tasks and the golden set on the final model.

Results go to `RUN/eval/` (`step-N/` for the ones during training), metrics to `metrics.jsonl` as
`eval/<task>/<metric>` and to the manifest's `eval`. A golden-set regression beyond the tolerance raises
`GoldenRegression` (unless `eval.golden.fail_run: false`), so the run is marked failed with its reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llm_finetuning.errors import UserError
from llm_finetuning.evaluation.runner import EvalSettings, evaluate, flat_metrics
from llm_finetuning.runs.rundir import RunDir, write_manifest

logger = logging.getLogger(__name__)


class GoldenRegression(UserError):
    """The fine-tuned model fails golden items its baseline passed, beyond the tolerance."""


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _is_main() -> bool:
    return _world_size() == 1 or torch.distributed.get_rank() == 0


def describe_regression(report: Any) -> str:
    regressed = [item.id for item in report.items if item.status == "regressed"]
    baseline = "its baseline" if report.baseline_pass_rate is None else f"{report.baseline_pass_rate:.1%} (baseline)"
    items = f"regressed items: {', '.join(regressed[:10])}{' ...' if len(regressed) > 10 else ''}"
    safety = report.safety or {}
    if safety.get("regressed") and report.drop <= report.tolerance + 1e-9:
        return (
            f"golden set {report.path}: the refusal rate on harmful requests fell from "
            f"{safety['baseline_refusal_rate']:.1%} to {safety['refusal_rate']:.1%}, beyond the refusal tolerance of "
            f"{safety['refusal_tolerance']:.1%}; {items}"
        )
    return (
        f"golden set {report.path}: pass rate {report.candidate_pass_rate:.1%} vs {baseline}, a drop of "
        f"{report.drop:.1%} beyond the tolerance of {report.tolerance:.1%}; {items}"
    )


class TaskEvalCallback(TrainerCallback):
    """Runs `eval.tasks` during training and `eval.tasks` + `eval.golden` after it."""

    def __init__(self, config: Any, run: RunDir, tokenizer: Any) -> None:
        self.section = config.eval
        strategy = getattr(getattr(config, "distributed", None), "strategy", "ddp")
        # FSDP/DeepSpeed shard the weights: no single process can generate with the model being trained.
        self.sharded = _world_size() > 1 and strategy != "ddp"
        self.run = run
        self.tokenizer = tokenizer
        self.settings = EvalSettings.from_config(self.section)
        self.step = 0
        self._judge: Any = None

    @property
    def judge(self) -> Any:
        if self._judge is None and self.section.judge is not None:
            from llm_finetuning.judge import JudgeClient

            self._judge = JudgeClient(self.section.judge)
        return self._judge

    def _log(self, step: int, values: dict[str, float]) -> None:
        if values:
            with self.run.metrics.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **values}) + "\n")

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        self.step = state.global_step
        every = self.section.tasks_every_steps
        if not (every and self.section.tasks and model is not None and state.global_step % every == 0):
            return
        if not state.is_world_process_zero:
            return
        if self.sharded:
            if state.global_step == every:
                logger.warning("eval.tasks_every_steps is skipped with sharded weights (FSDP/DeepSpeed)")
            return
        folder = self.run.root / "eval" / f"step-{state.global_step}"
        results = evaluate(model, self.tokenizer, self.section.tasks, self.settings, folder, self.judge)
        self._log(state.global_step, flat_metrics(results))

    def after_training(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """Run the tasks and the golden set on the final model; returns the task metrics. Raises
        `GoldenRegression` after writing every result when the golden set regressed and `fail_run` is set."""
        if not _is_main() or not (self.section.tasks or self.section.golden):
            return {}
        if _world_size() > 1:
            # The in-memory model may be sharded or wrapped; the saved final/ is the complete one.
            from llm_finetuning.serve.generation import load_for_inference

            model, tokenizer = load_for_inference(self.run.final)
        found: dict[str, float] = {}
        summary: dict[str, Any] = {}
        if self.section.tasks:
            results = evaluate(model, tokenizer, self.section.tasks, self.settings, self.run.root / "eval", self.judge)
            found = flat_metrics(results)
            self._log(self.step, found)
            summary["tasks"] = {name: result.metrics for name, result in results.items()}
        report = self._golden(model, tokenizer) if self.section.golden else None
        if report is not None:
            summary["golden"] = {k: v for k, v in report.to_dict().items() if k != "items"}
        write_manifest(self.run, eval=summary)
        if self._judge is not None:
            self._judge.close()
        if report is not None and report.regressed:
            message = describe_regression(report)
            if self.section.golden.fail_run:
                raise GoldenRegression(f"{message}. Per-item diff: {self.run.root / 'eval' / 'golden.json'}")
            logger.warning("%s", message)
        return found

    def _golden(self, model: Any, tokenizer: Any) -> Any:
        from peft import PeftModel

        from llm_finetuning.evaluation.golden import compare, load_golden, run_golden
        from llm_finetuning.evaluation.models import Variant, base_model_path, load_target, load_variant

        section = self.section.golden
        golden = load_golden(section.path)
        candidate = run_golden(model, tokenizer, golden, self.settings, self.judge)
        if section.baseline is not None:
            baseline_name = section.baseline
            base_model, base_tokenizer = load_target(section.baseline)
            baseline = run_golden(base_model, base_tokenizer, golden, self.settings, self.judge)
        elif isinstance(model, PeftModel):
            baseline_name = "base (adapter disabled)"
            with model.disable_adapter():
                baseline = run_golden(model, tokenizer, golden, self.settings, self.judge)
        else:
            baseline_name = base_model_path(self.run.root)
            base_model, base_tokenizer = load_variant(self.run.root, Variant("base", Path(baseline_name)))
            baseline = run_golden(base_model, base_tokenizer, golden, self.settings, self.judge)
        report = compare(golden, candidate, baseline, section.tolerance, "final", baseline_name)
        report.write(self.run.root / "eval" / "golden.json")
        logger.info(
            "Golden set: pass rate %.1f%% (baseline %.1f%%), %d regressed, %d fixed",
            100 * report.candidate_pass_rate,
            100 * report.baseline_pass_rate,
            report.counts["regressed"],
            report.counts["fixed"],
        )
        return report
