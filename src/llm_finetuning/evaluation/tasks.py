"""The evaluation tasks: each is a dataset, a split, a prompt (the named dataset's own template) and a metric.

Answers are read and graded by the reward library (`llm_finetuning.rewards`): a task's accuracy is the share of
outputs the matching correctness reward scores as correct, and the recorded prediction is what the reward's
extractor reads, so training rewards and evaluation never disagree on what an answer is.

This module is pure Python (no torch): it loads examples and scores outputs; `runner.py` runs the model.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llm_finetuning.data.formats import RowError, text_field, to_messages
from llm_finetuning.errors import DataError
from llm_finetuning.evaluation import metrics
from llm_finetuning.rewards import math as math_rewards
from llm_finetuning.rewards import qa as qa_rewards
from llm_finetuning.rewards.extract import (
    answer_or_text,
    extract_boxed,
    extract_choice_letter,
    extract_final_answer,
    extract_yes_no_maybe,
)

logger = logging.getLogger(__name__)

Kind = Literal["generate", "loglik", "perplexity", "judged", "retrieval", "rerank", "classification", "tool_calls"]
Messages = list[dict[str, Any]]


@dataclass
class Example:
    """One evaluation item."""

    id: str
    """Where it came from: `file:line` or `hub-id[split]:row`."""
    prompt: Messages = field(default_factory=list)
    """The conversation to answer (the dataset's own prompt template)."""
    gold: dict[str, Any] = field(default_factory=dict)
    """Reference columns, as the rewards read them: `answer`, `answers` (any-of), `answer_text`..."""
    target: str | None = None
    """The reference text (the dataset's SFT target), for ROUGE/BLEU and judges."""
    options: list[tuple[str, str]] | None = None
    """Multiple choice: (letter, option text) in the order shown in the prompt."""
    text: str | None = None
    """Perplexity: the document."""
    tools: list[dict[str, Any]] | None = None
    """Tool calls: the declared tools the prompt is rendered with (`[]`: none declared); None: not a tool task."""


Scorer = Callable[[str, Example], dict[str, Any]]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Kind
    description: str
    dataset: str | None = None
    """The named dataset the task reads; None: the task config gives `path` or `dataset`."""
    split: str = "test"
    """Default split (the dataset's split names: `train`/`eval`/`test`, or a hub split)."""
    max_new_tokens: int = 256
    score: Scorer | None = None
    """Generation tasks: per-example fields (`prediction`, `reference`, and one value per metric)."""
    metrics: tuple[str, ...] = ()
    """Per-example values averaged into the task's metrics (with a standard error)."""
    needs_target: bool = False
    """Whether examples need the reference text (`Example.target`)."""


# ----------------------------------------------------------------------------------------------- scoring
def _columns(example: Example) -> dict[str, list[Any]]:
    """The example's reference columns as a reward batch of one."""
    return {key: [value] for key, value in example.gold.items()}


def score_gsm8k(output: str, example: Example) -> dict[str, Any]:
    """`accuracy`: the final answer (`<answer>` block, else after `####`) graded correct by `answer_correctness`;
    `accuracy_flexible`: the last number anywhere in the output graded the same way (for models that ignore
    the format)."""
    reward = math_rewards.answer_correctness([output], **_columns(example))[0]
    flexible = math_rewards.grade_answer(output, example.gold["answer"])
    return {
        "prediction": extract_final_answer(output),
        "reference": example.gold["answer"],
        "accuracy": float(reward == math_rewards.CORRECT),
        "accuracy_flexible": float(flexible == math_rewards.CORRECT),
    }


def score_boxed(output: str, example: Example) -> dict[str, Any]:
    """`accuracy`: the last `\\boxed{}` is the reference answer (`boxed_correctness`)."""
    reward = math_rewards.boxed_correctness([output], **_columns(example))[0]
    return {
        "prediction": extract_boxed(output),
        "reference": example.gold["answer"],
        "accuracy": float(reward == math_rewards.CORRECT),
    }


def score_choice(output: str, example: Example) -> dict[str, Any]:
    """`accuracy`: the option letter the output picks (`extract_choice_letter`) is the gold letter
    (`multiple_choice_letter`)."""
    reward = qa_rewards.multiple_choice_letter([output], answer=[example.gold["answer"]])[0]
    return {
        "prediction": extract_choice_letter(answer_or_text(output)),
        "reference": example.gold["answer"],
        "accuracy": reward,
    }


def score_decision(output: str, example: Example) -> dict[str, Any]:
    """`accuracy`: the yes/no/maybe decision (`extract_yes_no_maybe`) is the gold one (`decision_correctness`)."""
    reward = qa_rewards.decision_correctness([output], answer=[example.gold["answer"]])[0]
    return {
        "prediction": extract_yes_no_maybe(answer_or_text(output)),
        "reference": example.gold["answer"],
        "accuracy": reward,
    }


def score_short_answer(output: str, example: Example) -> dict[str, Any]:
    """`exact_match` and `f1` (SQuAD normalisation) of the answer against any of the references."""
    columns = _columns(example)
    references = example.gold.get("answers") or [example.gold["answer"]]
    return {
        "prediction": answer_or_text(output),
        "reference": references,
        "exact_match": qa_rewards.exact_match([output], **columns)[0],
        "f1": qa_rewards.token_f1([output], **columns)[0],
    }


def score_overlap(output: str, example: Example) -> dict[str, Any]:
    """ROUGE-1/2/L F1 of the output against the reference text, and the sentence BLEU (corpus BLEU is the
    task's `bleu`)."""
    reference = example.target or ""
    return {
        "prediction": output,
        "reference": reference,
        **metrics.rouge(output, reference),
        "sentence_bleu": metrics.sentence_bleu(output, reference),
    }


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "gsm8k_accuracy",
            "generate",
            "GSM8K test: final `#### N` (or <answer>) graded by answer_correctness; also the last number anywhere.",
            dataset="gsm8k",
            max_new_tokens=512,
            score=score_gsm8k,
            metrics=("accuracy", "accuracy_flexible"),
        ),
        TaskSpec(
            "math_boxed_accuracy",
            "generate",
            "MATH-style: the last \\boxed{} against the reference answer (boxed_correctness); OpenR1-Math layout.",
            dataset="openr1_math",
            split="train",
            max_new_tokens=1024,
            score=score_boxed,
            metrics=("accuracy",),
        ),
        TaskSpec(
            "arc_generate",
            "generate",
            "ARC-Challenge test: the option letter of the generated answer.",
            dataset="arc",
            max_new_tokens=32,
            score=score_choice,
            metrics=("accuracy",),
        ),
        TaskSpec(
            "arc_loglik",
            "loglik",
            "ARC-Challenge test: the option whose text the model finds most likely (acc: sum of log-probs, "
            "acc_norm: per byte).",
            dataset="arc",
        ),
        TaskSpec(
            "medqa_generate",
            "generate",
            "MedQA (USMLE) test: the option letter of the generated answer.",
            dataset="medqa",
            max_new_tokens=32,
            score=score_choice,
            metrics=("accuracy",),
        ),
        TaskSpec(
            "medqa_loglik",
            "loglik",
            "MedQA (USMLE) test: the most likely option text (acc: sum of log-probs, acc_norm: per byte).",
            dataset="medqa",
        ),
        TaskSpec(
            "pubmedqa_accuracy",
            "generate",
            "PubMedQA (PQA-L): the yes/no/maybe decision of the answer.",
            dataset="pubmedqa",
            split="train",
            max_new_tokens=128,
            score=score_decision,
            metrics=("accuracy",),
        ),
        TaskSpec(
            "hotpotqa_qa",
            "generate",
            "HotpotQA dev: exact match and token F1 of the short answer.",
            dataset="hotpotqa",
            split="eval",
            max_new_tokens=32,
            score=score_short_answer,
            metrics=("exact_match", "f1"),
        ),
        TaskSpec(
            "freshqa_qa",
            "generate",
            "FreshQA: exact match and token F1 against any of answer_0..answer_9.",
            dataset="freshqa",
            split="train",
            max_new_tokens=64,
            score=score_short_answer,
            metrics=("exact_match", "f1"),
        ),
        TaskSpec(
            "popqa_qa",
            "generate",
            "PopQA: exact match and token F1 against any of the possible answers.",
            dataset="popqa",
            max_new_tokens=32,
            score=score_short_answer,
            metrics=("exact_match", "f1"),
        ),
        TaskSpec(
            "perplexity",
            "perplexity",
            "Perplexity of a text file or of rows' text column (sliding window, every token scored once).",
            max_new_tokens=0,
        ),
        TaskSpec(
            "rouge_bleu",
            "generate",
            "ROUGE-1/2/L (rouge-score) and corpus BLEU (sacrebleu) of the answer against the reference text.",
            split="test",
            score=score_overlap,
            metrics=("rouge1", "rouge2", "rougeL", "sentence_bleu"),
            needs_target=True,
        ),
        TaskSpec(
            "pubmedqa_retrieval",
            "retrieval",
            "PubMedQA (PQA-L) questions against the abstracts of every row (embedding models): NDCG@10, MRR@10, "
            "MAP@100, recall@1/5/10.",
            dataset="pubmedqa",
            split="train",
        ),
        TaskSpec(
            "pubmedqa_rerank",
            "rerank",
            "PubMedQA: each question's abstract among the 9 others that share the most words with it (rerankers): "
            "NDCG@10, MRR@10, MAP.",
            dataset="pubmedqa",
            split="train",
        ),
        TaskSpec(
            "pubmedqa_classify",
            "classification",
            "PubMedQA: question + abstract -> yes/no/maybe (classifiers): accuracy, macro F1, F1 per class.",
            dataset="pubmedqa",
            split="train",
        ),
        TaskSpec(
            "retrieval",
            "retrieval",
            "`retrieval` rows of a file (query, positive, negatives; corpus: every positive and negative).",
            split="test",
        ),
        TaskSpec(
            "rerank",
            "rerank",
            "`retrieval` rows of a file: each query's positive among its negatives (or lexically close positives).",
            split="test",
        ),
        TaskSpec(
            "classification",
            "classification",
            "`labeled_text` rows of a file: accuracy, macro F1, F1 per class.",
            split="test",
        ),
        TaskSpec(
            "tool_calls",
            "tool_calls",
            "Conversations with tools (`messages`, `sharegpt`): the last assistant turn's calls (or no call) against "
            "the reply's, read in the chat template's call layout: exact, tool_selected, arguments_match, "
            "no_call_correct, malformed.",
            split="test",
            metrics=("exact", "tool_selected", "arguments_match", "no_call_correct", "malformed"),
        ),
        TaskSpec(
            "judged",
            "judged",
            "An LLM judge's score (0-1) of the answer against the reference, with a rubric (eval.judge).",
            split="test",
            needs_target=True,
        ),
    )
}


# ----------------------------------------------------------------------------------------------- data
def _relabelled(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # The ARC module letters every question A, B, C... in order (some are labelled 1-4); do the same here.
    return [(string.ascii_uppercase[i], option) for i, (_, option) in enumerate(pairs)]


def _option_readers() -> dict[str, Callable[[dict[str, Any]], list[tuple[str, str]]]]:
    from llm_finetuning.data.datasets import arc, medqa

    return {"arc": lambda row: _relabelled(arc.choices(row)), "medqa": medqa.options}


def _named_rows(name: str, path: str | None, split: str, subset: str | None) -> Iterator[Any]:
    from llm_finetuning.config.schema import DataSource
    from llm_finetuning.data.datasets import registry
    from llm_finetuning.data.reading import read_rows, read_source

    named = registry()[name]
    if path is not None:
        return read_rows(path)
    hub_split = named.splits.get(split, split)
    return read_source(DataSource(hub=named.hub_id, subset=subset or named.subset, split=hub_split))


def _file_rows(path: str) -> Iterator[Any]:
    from llm_finetuning.data.reading import read_rows

    return read_rows(path)


def _named_example(name: str, spec: TaskSpec, row: dict[str, Any], where: str) -> Example:
    from llm_finetuning.data.datasets import registry

    named = registry()[name]
    record = named.converters["prompt_only"](row)
    prompt = record.pop("prompt")
    example = Example(id=where, prompt=prompt, gold=record)
    if spec.needs_target:
        example.target = named.converters["messages"](row)["messages"][-1]["content"]
    if spec.kind == "loglik":
        readers = _option_readers()
        if name not in readers:
            raise DataError(f"task `{spec.name}`: dataset `{name}` has no multiple-choice options")
        example.options = readers[name](row)
    return example


def _file_example(spec: TaskSpec, row: dict[str, Any], where: str, fmt: str | None, columns: dict[str, str]) -> Example:
    if spec.kind == "perplexity":
        return Example(id=where, text=text_field(row, columns))
    if spec.kind == "tool_calls":
        from llm_finetuning.evaluation.tool_calls import tool_example  # it builds on this module's Example

        return tool_example(row, where, fmt, columns)
    messages = to_messages(row, fmt, columns)
    if messages[-1]["role"] != "assistant":
        raise RowError("the conversation must end with the assistant's reference answer")
    target = messages[-1]["content"]
    return Example(id=where, prompt=messages[:-1], gold={"answer": target}, target=target)


_DEFAULT_FORMATS: dict[str, str | None] = {"perplexity": "text", "tool_calls": None}
"""A file's row format when the task does not set one; None: `messages` or `sharegpt`, from each row's columns."""


def load_examples(task: Any, limit: int | None = None) -> tuple[list[Example], list[str]]:
    """The examples of one task (`EvalTaskConfig`), at most `limit`, and the rows skipped as unusable (each
    with its file, line and reason). Bad rows are skipped and counted: one malformed row of a public test
    set should not stop an evaluation, but the count is reported with the results."""
    spec = TASKS[task.name]
    dataset = spec.dataset or task.dataset
    split = task.split or spec.split
    if spec.kind == "perplexity" and task.path is not None and Path(task.path).suffix == ".txt":
        path = Path(task.path)
        if not path.is_file():
            raise DataError(f"task `{task.name}`: file not found: {path}")
        return [Example(id=str(path), text=path.read_text(encoding="utf-8"))], []
    if dataset is not None:
        rows = _named_rows(dataset, task.path, split, task.subset)
    else:
        rows = _file_rows(task.path)
    examples: list[Example] = []
    skipped: list[str] = []
    fmt = task.format or _DEFAULT_FORMATS.get(spec.kind, "prompt_completion")
    for row in rows:
        if limit is not None and len(examples) >= limit:
            break
        if isinstance(row, DataError):
            skipped.append(str(row))
            continue
        try:
            if dataset is not None:
                examples.append(_named_example(dataset, spec, row.data, row.where))
            else:
                examples.append(_file_example(spec, row.data, row.where, fmt, task.columns))
        except (RowError, DataError) as exc:
            skipped.append(f"{row.where}: {exc}")
    if skipped:
        logger.warning("Task %s: skipped %d unusable rows (first: %s)", task.name, len(skipped), skipped[0])
    if not examples:
        raise DataError(f"task `{task.name}`: no usable examples in {task.path or dataset}")
    return examples, skipped
