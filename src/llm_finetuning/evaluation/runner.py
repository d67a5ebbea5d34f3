"""Run evaluation tasks on a loaded model: batched greedy generation (or log-likelihoods), seeded, with a
progress hook, and one results JSON per task with every example's prompt, output, prediction and score."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from llm_finetuning.errors import UserError
from llm_finetuning.evaluation import metrics
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.tasks import TASKS, Example, TaskSpec, load_examples
from llm_finetuning.serve.generation import _render as render_prompt  # the exact text generation starts from
from llm_finetuning.serve.generation import generate

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """What the runner reports as it goes; the CLI shows it as a progress bar, the library only logs."""

    def start(self, name: str, total: int) -> None: ...

    def advance(self, count: int = 1) -> None: ...


class LogProgress:
    """The default: one log line when a task starts."""

    def start(self, name: str, total: int) -> None:
        logger.info("Evaluating %s on %d examples", name, total)

    def advance(self, count: int = 1) -> None:
        pass


@dataclass
class EvalSettings:
    """How tasks run when a task does not say otherwise (the `eval:` section's defaults)."""

    limit: int | None = None
    max_new_tokens: int | None = None
    batch_size: int = 8
    seed: int = 0
    temperature: float = 0.0
    """0 is greedy decoding; above 0 samples, repeatably for a given seed and batch size."""

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> EvalSettings:
        values = {name: getattr(section, name) for name in ("limit", "max_new_tokens", "batch_size", "seed")}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]
    examples: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> Path:
        """Write the results JSON atomically (a half-written file never replaces a good one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.part")
        partial.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n", "utf-8")
        os.replace(partial, path)
        return path


@contextmanager
def inference_mode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Eval mode with the KV cache on; the training state (mode, cache flag, padding side) is restored after,
    so the runner can be called in the middle of training."""
    was_training = model.training
    use_cache = getattr(model.config, "use_cache", None)
    padding_side = tokenizer.padding_side
    model.eval()
    if use_cache is not None:
        model.config.use_cache = True
    try:
        yield
    finally:
        model.train(was_training)
        if use_cache is not None:
            model.config.use_cache = use_cache
        tokenizer.padding_side = padding_side


def generate_all(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Any],
    settings: EvalSettings,
    max_new_tokens: int,
    progress: Progress,
) -> list[str]:
    """Completions of every prompt, `batch_size` at a time (progress reported after each batch)."""
    outputs: list[str] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        outputs.extend(
            generate(
                model,
                tokenizer,
                batch,
                max_new_tokens=max_new_tokens,
                temperature=settings.temperature,
                batch_size=len(batch),
            )
        )
        progress.advance(len(batch))
    return outputs


def _generation_records(spec: TaskSpec, examples: list[Example], outputs: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": ex.id, "prompt": ex.prompt, "output": out, **spec.score(out, ex)}
        for ex, out in zip(examples, outputs, strict=True)
    ]


def _run_generate(spec, examples, outputs) -> tuple[dict[str, float], list[dict[str, Any]]]:
    records = _generation_records(spec, examples, outputs)
    summary = metrics.summarise(records, spec.metrics)
    if spec.name == "rouge_bleu":
        summary["bleu"] = metrics.corpus_bleu([r["prediction"] for r in records], [r["reference"] for r in records])
    return summary, records


def _run_loglik(model, tokenizer, examples: list[Example], settings: EvalSettings, progress: Progress):
    from llm_finetuning.evaluation.multiple_choice import score_options

    records = []
    for ex in examples:
        letters = [letter for letter, _ in ex.options]
        scores = score_options(
            model, tokenizer, render_prompt(tokenizer, ex.prompt), [t for _, t in ex.options], settings.batch_size
        )
        gold = ex.gold["answer"]
        records.append(
            {
                "id": ex.id,
                "prompt": ex.prompt,
                "options": [{"letter": letter, "text": text} for letter, text in ex.options],
                "logprobs": scores.logprobs,
                "logprobs_per_byte": scores.normalised,
                "prediction": letters[scores.best],
                "prediction_norm": letters[scores.best_normalised],
                "reference": gold,
                "acc": float(letters[scores.best] == gold),
                "acc_norm": float(letters[scores.best_normalised] == gold),
            }
        )
        progress.advance(1)
    return metrics.summarise(records, ("acc", "acc_norm")), records


def _run_perplexity(model, tokenizer, task: EvalTaskConfig, examples: list[Example], progress: Progress):
    from llm_finetuning.evaluation.perplexity import corpus_nll, default_window

    window = task.window or default_window(model)
    stride = task.stride or window
    results = corpus_nll(model, tokenizer, [ex.text for ex in examples], window, stride, progress.advance)
    records = [
        {
            "id": ex.id,
            "nll": r.nll,
            "tokens": r.tokens,
            "perplexity": metrics.perplexity(r.nll, r.tokens),
        }
        for ex, r in zip(examples, results, strict=True)
    ]
    nll, tokens = sum(r.nll for r in results), sum(r.tokens for r in results)
    summary = {
        "perplexity": metrics.perplexity(nll, tokens),
        "nll_per_token": nll / tokens if tokens else float("nan"),
        "tokens": float(tokens),
        "window": float(window),
        "stride": float(stride),
    }
    return summary, records


def _check_judge(task: EvalTaskConfig, judge: Any) -> None:
    """Before any generation: a judged task needs a judge client and a known rubric."""
    from llm_finetuning.judge.rubrics import RUBRICS

    if judge is None:
        raise UserError("task `judged` needs a judge: set `eval.judge` (or pass --judge-config)")
    if (task.rubric or "correctness") not in RUBRICS:
        raise UserError(f"task `judged`: unknown rubric `{task.rubric}`; choose one of {', '.join(RUBRICS)}")


def _run_judged(task: EvalTaskConfig, examples: list[Example], outputs: list[str], judge: Any):
    from llm_finetuning.judge.rubrics import RUBRICS, JudgeItem
    from llm_finetuning.rewards.extract import answer_or_text
    from llm_finetuning.rewards.judged import prompt_text

    rubric = RUBRICS[task.rubric or "correctness"]
    items = []
    for ex, out in zip(examples, outputs, strict=True):
        references = ex.gold.get("answers") or [ex.gold.get("answer") or ex.target or ""]
        items.append(
            JudgeItem(
                answer=answer_or_text(out),
                references=tuple(str(r) for r in references if r),
                question=prompt_text(ex.prompt),
            )
        )
    before = judge.stats.snapshot()
    scores = judge.score_many(rubric, items)
    after = judge.stats.snapshot()
    records = [
        {
            "id": ex.id,
            "prompt": ex.prompt,
            "output": out,
            "prediction": item.answer,
            "reference": list(item.references),
            "score": score,
        }
        for ex, out, item, score in zip(examples, outputs, items, scores, strict=True)
    ]
    summary = metrics.summarise(records, ("score",))
    summary["judge_fallbacks"] = float(after["fallbacks"] - before["fallbacks"])
    return summary, records


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: EvalTaskConfig,
    settings: EvalSettings | None = None,
    judge: Any = None,
    progress: Progress | None = None,
) -> TaskResult:
    """Run one task and return its metrics and per-example records (nothing is written)."""
    settings = settings or EvalSettings()
    progress = progress or LogProgress()
    spec = TASKS[task.name]
    if spec.kind == "judged":
        _check_judge(task, judge)
    limit = task.limit or settings.limit
    examples, skipped = load_examples(task, limit)
    max_new_tokens = task.max_new_tokens or settings.max_new_tokens or spec.max_new_tokens
    set_seed(settings.seed)
    progress.start(task.name, len(examples))
    with inference_mode(model, tokenizer):
        if spec.kind == "perplexity":
            summary, records = _run_perplexity(model, tokenizer, task, examples, progress)
        elif spec.kind == "loglik":
            summary, records = _run_loglik(model, tokenizer, examples, settings, progress)
        else:
            prompts = [ex.prompt for ex in examples]
            outputs = generate_all(model, tokenizer, prompts, settings, max_new_tokens, progress)
            if spec.kind == "judged":
                summary, records = _run_judged(task, examples, outputs, judge)
            else:
                summary, records = _run_generate(spec, examples, outputs)
    summary["examples"] = float(len(records))
    used = {
        "task": task.model_dump(exclude_defaults=True),
        "limit": limit,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "temperature": settings.temperature,
    }
    if spec.kind in ("generate", "judged"):
        used["max_new_tokens"] = max_new_tokens
    logger.info("%s: %s", task.name, ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if "stderr" not in k))
    return TaskResult(task.name, summary, records, skipped, used)


def result_names(tasks: list[EvalTaskConfig]) -> list[str]:
    """The file name (without `.json`) of each task's results: its name, numbered when a name repeats."""
    seen: dict[str, int] = {}
    names = []
    for task in tasks:
        seen[task.name] = seen.get(task.name, 0) + 1
        names.append(task.name if seen[task.name] == 1 else f"{task.name}-{seen[task.name]}")
    return names


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[EvalTaskConfig],
    settings: EvalSettings | None = None,
    output_dir: Path | None = None,
    judge: Any = None,
    progress: Progress | None = None,
    model_name: str = "",
) -> dict[str, TaskResult]:
    """Run every task; with `output_dir`, write `<output_dir>/<task>.json` for each."""
    results: dict[str, TaskResult] = {}
    for name, task in zip(result_names(tasks), tasks, strict=True):
        result = evaluate_task(model, tokenizer, task, settings, judge, progress)
        result.model = model_name
        results[name] = result
        if output_dir is not None:
            result.write(Path(output_dir) / f"{name}.json")
    return results


def flat_metrics(results: dict[str, TaskResult], prefix: str = "eval/") -> dict[str, float]:
    """`eval/<task>/<metric>` for every metric of every task (for metrics.jsonl and the manifest)."""
    return {
        f"{prefix}{name}/{metric}": value
        for name, result in results.items()
        for metric, value in result.metrics.items()
        if not metric.endswith("_stderr")
    }
