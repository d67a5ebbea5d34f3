"""The schema of evaluation: one task to run (`eval.tasks`) and the golden-set guard (`eval.golden`).

Kept free of heavy imports: `config/schema.py` imports it, and task names are checked against the task
registry only when a config is validated.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llm_finetuning.config.base import Section


class EvalTaskConfig(Section):
    """One evaluation task: a dataset, a split, a prompt and a metric (`llmft eval --list` shows them all)."""

    name: str
    """Task name: `gsm8k_accuracy`, `math_boxed_accuracy`, `arc_generate`, `arc_loglik`, `medqa_generate`,
    `medqa_loglik`, `pubmedqa_accuracy`, `hotpotqa_qa`, `freshqa_qa`, `popqa_qa`, `perplexity`, `rouge_bleu`,
    `judged` or `tool_calls`; for embedding, reranker and classifier models `pubmedqa_retrieval`, `pubmedqa_rerank`,
    `pubmedqa_classify`, or `retrieval`, `rerank`, `classification` on a file."""
    path: str | None = None
    """A local file instead of the hub copy: for dataset tasks, a file in the named dataset's own layout (e.g.
    GSM8K's `test.jsonl`); for `perplexity` a `.txt` document or rows with a text column; for `rouge_bleu` and
    `judged` rows in `format`; for `tool_calls` conversations with tools (`messages` or `sharegpt`). Relative
    paths are relative to the YAML file that sets them."""
    dataset: str | None = None
    """For `rouge_bleu` and `judged`: a named dataset (`llmft data datasets`) whose prompts and
    reference answers are used. The other tasks know their dataset."""
    split: str | None = None
    """Dataset split (`test`, `eval`, `train` or a hub split name); each task has a default (usually `test`)."""
    subset: str | None = None
    """Hub configuration of the dataset (e.g. `ARC-Easy` for the ARC tasks)."""
    format: (
        Literal["prompt_completion", "alpaca", "messages", "sharegpt", "text", "retrieval", "labeled_text"] | None
    ) = None
    """Row format of `path` for `rouge_bleu`/`judged` (default `prompt_completion`: the last assistant turn is
    the reference), `perplexity` (default `text`), `retrieval`/`rerank` (`retrieval`), `classification`
    (`labeled_text`) and `tool_calls` (`messages` or `sharegpt`; default: whichever column each row has)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Map from the format's field name to the file's column, as in `data.*.columns` (e.g. `{text: body}`)."""
    limit: int | None = Field(None, gt=0)
    """Evaluate only the first N examples; unset: `eval.limit`, else all."""
    max_new_tokens: int | None = Field(None, gt=0)
    """Tokens generated per answer; unset: `eval.max_new_tokens`, else the task's default."""
    window: int | None = Field(None, gt=1)
    """`perplexity`: tokens per forward pass (the context window); unset: the model's maximum, at most 1024."""
    stride: int | None = Field(None, gt=0)
    """`perplexity`: how far the window moves each pass; each token is scored once, with up to
    `window - stride` tokens of extra context. Unset: `window` (non-overlapping windows)."""
    rubric: str | None = None
    """`judged`: the judge rubric (`correctness`, the default, `multihop_qa`, `medical_qa`, `summarization`,
    `answer_relevancy`); needs `eval.judge`."""

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        from llm_finetuning.evaluation.tasks import TASKS

        if value not in TASKS:
            close = difflib.get_close_matches(value, list(TASKS), n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise ValueError(f"unknown evaluation task `{value}`.{hint} Known: {', '.join(TASKS)}")
        return value

    @model_validator(mode="after")
    def _fits_task(self) -> EvalTaskConfig:
        from llm_finetuning.evaluation.tasks import TASKS

        spec = TASKS[self.name]
        if self.dataset is not None and spec.dataset is not None:
            raise ValueError(f"task `{self.name}` reads dataset `{spec.dataset}`; remove `dataset` (use `path`)")
        if spec.kind == "perplexity" and self.dataset is not None:
            raise ValueError("`perplexity` reads a text file or rows with a text column: set `path`, not `dataset`")
        if spec.kind == "tool_calls" and self.dataset is not None:
            raise ValueError(
                "`tool_calls` reads a file of conversations with tools: set `path` (and `format: messages` or "
                "`sharegpt`), not `dataset`"
            )
        if spec.dataset is None and self.path is None and self.dataset is None:
            raise ValueError(f"task `{self.name}` needs data: set `path` (a local file) or `dataset` (a named one)")
        if self.dataset is not None and (self.format is not None or self.columns):
            raise ValueError("a named `dataset` maps its own rows; remove `format` and `columns`")
        if (self.window is not None or self.stride is not None) and spec.kind != "perplexity":
            raise ValueError(f"`window` and `stride` apply to the `perplexity` task, not `{self.name}`")
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise ValueError(f"`stride` ({self.stride}) cannot exceed `window` ({self.window}): tokens would be missed")
        fits = {"perplexity": ("text",), "retrieval": ("retrieval",), "rerank": ("retrieval",)}
        fits["classification"] = ("labeled_text",)
        fits["tool_calls"] = ("messages", "sharegpt")
        allowed = fits.get(spec.kind, ("prompt_completion", "alpaca", "messages", "sharegpt"))
        if self.format is not None and self.format not in allowed:
            raise ValueError(f"`format: {self.format}` does not fit task `{self.name}`; use {' or '.join(allowed)}")
        if self.rubric is not None and spec.kind != "judged":
            raise ValueError(f"`rubric` applies to the `judged` task, not `{self.name}`")
        return self


class GoldenConfig(Section):
    """A golden set: prompts with the behaviour the model must keep, checked against a baseline model."""

    path: str
    """The golden file (YAML or JSONL; see docs/evaluation.md): each item a prompt and an expectation (`exact`,
    `contains`, `regex` or `judged`) with an optional `threshold`. Relative to the YAML file that sets it."""
    baseline: str | None = None
    """Model to compare with: a run directory, model directory or hub id (`./` or `../` paths are relative to
    the YAML file). Unset: the run's own base model (for an adapter run, the same model with the adapter
    disabled)."""
    tolerance: float | None = Field(None, ge=0, le=1)
    """Largest allowed drop of the pass rate (0.1 = ten points) before it counts as a regression; unset: the
    file's `tolerance`, else 0."""
    fail_run: bool = True
    """After training, mark the run failed (and `llmft train` exit non-zero) when the golden set regresses."""


def one_or_many_tasks(value: Any) -> Any:
    """`tasks: gsm8k_accuracy`, `tasks: [gsm8k_accuracy, {name: arc_loglik, limit: 50}]`: names become mappings."""
    if isinstance(value, str | dict):
        value = [value]
    if isinstance(value, list):
        return [{"name": item} if isinstance(item, str) else item for item in value]
    return value
