"""Run evaluation tasks on a loaded model: batched greedy generation (or log-likelihoods), seeded, with a
progress hook, and one results JSON per task with every example's prompt, output, prediction and score.

Nothing is fed past the model's context (`context.context_length`): a generation example whose prompt leaves no
room for `max_new_tokens` is skipped, listed in `skipped` with its reason and counted in the task's
`skipped_too_long`; a log-likelihood example keeps every option token and loses context from the left, marked
`truncated` and counted in `truncated`. Cutting a generation prompt would remove the chat template's start or
the question's evidence, so the model would answer a different question; skipping keeps the score honest.
"""

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
from llm_finetuning.evaluation import metrics, tool_calls
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.context import context_length, prompt_overflow
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
    max_length: int | None = None
    """Tokens the model reads at most (prompt + answer); None: the model's own context."""

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> EvalSettings:
        names = ("limit", "max_new_tokens", "batch_size", "seed", "max_length")
        values = {name: getattr(section, name) for name in names}
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


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, prompt: Any, tools: list[dict[str, Any]] | None = None) -> int:
    """Tokens of a prompt exactly as generation feeds it (rendered with the chat template, no added specials);
    with `tools` (a tool-call prompt, `[]` when none are declared) rendered as tool-call generation renders it."""
    text = render_prompt(tokenizer, prompt) if tools is None else tool_calls.render_prompt(tokenizer, prompt, tools)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_room(max_new_tokens: int, limit: int | None, where: str) -> None:
    """A `UserError` when `max_new_tokens` alone fills the context: no prompt could be answered."""
    if limit is not None and max_new_tokens >= limit:
        raise UserError(
            f"{where}: max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
            f"{limit} tokens; lower max_new_tokens (the task's, eval.max_new_tokens or --max-new-tokens), or set "
            "eval.max_length (--max-length) if the model reads longer sequences"
        )


def fitting_examples(
    tokenizer: PreTrainedTokenizerBase, examples: list[Example], max_new_tokens: int, limit: int | None
) -> tuple[list[Example], list[str]]:
    """The examples whose prompt plus `max_new_tokens` fits `limit`, and `id: reason` for each of the others."""
    if limit is None:
        return examples, []
    kept: list[Example] = []
    dropped: list[str] = []
    for ex in examples:
        reason = prompt_overflow(prompt_tokens(tokenizer, ex.prompt, ex.tools), max_new_tokens, limit)
        if reason is None:
            kept.append(ex)
        else:
            dropped.append(f"{ex.id}: {reason}")
    return kept, dropped


def _generation_records(spec: TaskSpec, examples: list[Example], outputs: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": ex.id, "prompt": ex.prompt, "output": out, **spec.score(out, ex)}
        for ex, out in zip(examples, outputs, strict=True)
    ]


def _run_generate(spec, examples, outputs) -> tuple[dict[str, float], list[dict[str, Any]]]:
    records = _generation_records(spec, examples, outputs)
    summary = metrics.summarise(records, spec.metrics)
    if spec.name == "rouge_bleu":
        predictions, references = [r["prediction"] for r in records], [r["reference"] for r in records]
        summary["bleu"] = metrics.corpus_bleu(predictions, references) if records else float("nan")
    return summary, records


def _run_loglik(model, tokenizer, examples: list[Example], settings: EvalSettings, context: int | None, progress):
    from llm_finetuning.evaluation.multiple_choice import ContinuationTooLong, score_options

    records = []
    too_long: list[str] = []
    for ex in examples:
        letters = [letter for letter, _ in ex.options]
        try:
            scores = score_options(
                model,
                tokenizer,
                render_prompt(tokenizer, ex.prompt),
                [t for _, t in ex.options],
                settings.batch_size,
                context,
            )
        except ContinuationTooLong as exc:
            too_long.append(f"{ex.id}: {exc}")
            progress.advance(1)
            continue
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
                "truncated": scores.truncated,
                "context_tokens_dropped": scores.dropped,
            }
        )
        progress.advance(1)
    summary = metrics.summarise(records, ("acc", "acc_norm"))
    summary["truncated"] = float(sum(r["truncated"] for r in records))
    return summary, records, too_long


def _run_perplexity(model, tokenizer, task: EvalTaskConfig, examples: list[Example], context: int | None, progress):
    from llm_finetuning.evaluation.perplexity import choose_window, corpus_nll

    window, stride = choose_window(task.window, task.stride, context)
    texts = [ex.text for ex in examples]
    results = corpus_nll(model, tokenizer, texts, window, stride, progress.advance, max_length=context)
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
    if spec.kind == "tool_calls":
        tool_calls.call_format(tokenizer)  # before any data is read: no layout, no readable calls
    limit = task.limit or settings.limit
    max_new_tokens = task.max_new_tokens or settings.max_new_tokens or spec.max_new_tokens
    context = context_length(model, tokenizer, settings.max_length)
    generates = spec.kind in ("generate", "judged", "tool_calls")
    if generates:
        check_room(max_new_tokens, context, f"task `{task.name}`")
    examples, skipped = load_examples(task, limit)
    too_long: list[str] = []
    if spec.kind == "tool_calls":
        examples, unrenderable = tool_calls.renderable(tokenizer, examples)
        skipped += unrenderable
    if generates:
        examples, too_long = fitting_examples(tokenizer, examples, max_new_tokens, context)
    set_seed(settings.seed)
    progress.start(task.name, len(examples))
    with inference_mode(model, tokenizer):
        if spec.kind == "perplexity":
            summary, records = _run_perplexity(model, tokenizer, task, examples, context, progress)
        elif spec.kind == "loglik":
            summary, records, too_long = _run_loglik(model, tokenizer, examples, settings, context, progress)
        elif spec.kind == "tool_calls":
            summary, records = tool_calls.run_task(
                model, tokenizer, examples, max_new_tokens, settings.temperature, settings.batch_size, progress.advance
            )
        else:
            prompts = [ex.prompt for ex in examples]
            outputs = generate_all(model, tokenizer, prompts, settings, max_new_tokens, progress)
            if spec.kind == "judged":
                summary, records = _run_judged(task, examples, outputs, judge)
            else:
                summary, records = _run_generate(spec, examples, outputs)
    summary["examples"] = float(len(records))
    if spec.kind != "perplexity":
        summary["skipped_too_long"] = float(len(too_long))
    _warn_over_context(task.name, spec.kind, summary, too_long, context)
    used = {
        "task": task.model_dump(exclude_defaults=True),
        "limit": limit,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "temperature": settings.temperature,
        "max_length": context,
    }
    if generates:
        used["max_new_tokens"] = max_new_tokens
    logger.info("%s: %s", task.name, ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if "stderr" not in k))
    return TaskResult(task.name, summary, records, skipped + too_long, used)


def _warn_over_context(name: str, kind: str, summary: dict[str, float], too_long: list[str], context: int | None):
    """One warning per task that skipped or truncated examples to fit the model's context."""
    skipped, truncated = int(summary.get("skipped_too_long", 0)), int(summary.get("truncated", 0))
    if not (skipped or truncated):
        return
    parts = []
    if truncated:
        parts.append(f"{truncated} had context cut from the left (marked `truncated`)")
    if skipped:
        what = "an option alone is too long" if kind == "loglik" else "no room for max_new_tokens"
        parts.append(f"{skipped} were skipped ({what}; first: {too_long[0]})")
    logger.warning(
        "Task %s: examples longer than the model's context of %d tokens: %s; %d scored. Use a model with a longer "
        "context (or eval.max_length if this one reads longer sequences)%s",
        name,
        context,
        ", ".join(parts),
        int(summary["examples"]),
        ", or lower max_new_tokens" if kind != "loglik" and skipped else "",
    )


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
