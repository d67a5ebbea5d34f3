"""Question-answering rewards: short answers (exact match, token F1, any-of references), a multiple-choice
letter (MedQA, ARC), a yes/no/maybe decision (PubMedQA), and the binary format rewards of the multi-hop and
medical pipelines.

The answer compared with the reference is the content of the last `<answer>` block when the completion has
one, else the whole completion (`answer_or_text`). Correctness rewards score 0.0 to 1.0; each format reward
is 0.0 or 1.0 at a default weight of 0.2, so all four together (0.8) stay below one correct answer (1.0).
"""

from __future__ import annotations

import string
from typing import Any

from llm_finetuning.errors import DataError
from llm_finetuning.rewards import extract
from llm_finetuning.rewards.base import RewardSpec, completion_text
from llm_finetuning.rewards.extract import (
    answer_or_text,
    extract_choice_letter,
    extract_tagged,
    extract_yes_no_maybe,
    non_empty_lines,
    only_blocks,
    well_formed_blocks,
)
from llm_finetuning.rewards.math import batch_references

ANY_OF = ("answers", "answer")
"""QA references: a list column `answers` (any of them counts), else the single `answer`."""
DEFAULT_LETTERS = "ABCDE"
DECISIONS = ("yes", "no", "maybe")
MIN_QA_REASONING_LINES = 3
LENGTH_WINDOW = (50, 2000)
FORMAT_WEIGHT = 0.2


# ----------------------------------------------------------------------------------------------- correctness
def exact_match(completions: list[Any], **columns: Any) -> list[float]:
    """1.0 when the answer equals any reference (`answers` list, else `answer`) after SQuAD normalisation
    (lower-case, no punctuation, no a/an/the, single spaces), else 0.0 (also for a row with no reference)."""
    references = batch_references(columns, ANY_OF, "exact_match", len(completions))
    return [
        extract.exact_match(answer_or_text(completion_text(completion)), refs)
        for completion, refs in zip(completions, references, strict=True)
    ]


def token_f1(completions: list[Any], **columns: Any) -> list[float]:
    """Token F1 between the normalised answer and the best of its references (`answers`, else `answer`):
    2PR/(P+R) over shared tokens, in [0.0, 1.0]; 0.0 for no shared token or no reference."""
    references = batch_references(columns, ANY_OF, "token_f1", len(completions))
    return [
        extract.token_f1(answer_or_text(completion_text(completion)), refs)
        for completion, refs in zip(completions, references, strict=True)
    ]


def _letter(reference: str, index: int) -> str:
    letter = reference.strip().strip("().").upper()
    if len(letter) != 1 or letter not in string.ascii_uppercase:
        raise DataError(
            f"reward `multiple_choice_letter` needs an option letter in column `answer`; row {index} has "
            f"`{reference[:40]}`. Use it with multiple-choice data (medqa, arc) or choose another reward."
        )
    return letter


def multiple_choice_letter(completions: list[Any], **columns: Any) -> list[float]:
    """1.0 when the letter picked by the answer (`extract_choice_letter`: `C`, `(C)`, `The answer is C`,
    `C. <option text>`...) is the reference letter in column `answer`, else 0.0 (wrong letter, no letter,
    several letters, or no reference). Letters A-E are read, more when the reference is a later letter.
    A reference that is not one letter raises `DataError` (the reward does not fit the data)."""
    references = batch_references(columns, ("answer",), "multiple_choice_letter", len(completions))
    scores = []
    for index, (completion, refs) in enumerate(zip(completions, references, strict=True)):
        letters = {_letter(ref, index) for ref in refs}
        last = max(letters, default="A")
        span = DEFAULT_LETTERS if last <= DEFAULT_LETTERS[-1] else string.ascii_uppercase[: ord(last) - 64]
        picked = extract_choice_letter(answer_or_text(completion_text(completion)), span)
        scores.append(1.0 if picked is not None and picked in letters else 0.0)
    return scores


def decision_correctness(completions: list[Any], **columns: Any) -> list[float]:
    """PubMedQA: 1.0 when the decision read from the answer (`extract_yes_no_maybe`: `The answer is yes.`,
    `No.`, `..., so maybe.`) equals the reference yes/no/maybe in column `answer`, else 0.0 (wrong, none, or
    no reference). A reference other than yes/no/maybe raises `DataError`."""
    references = batch_references(columns, ("answer",), "decision_correctness", len(completions))
    scores = []
    for index, (completion, refs) in enumerate(zip(completions, references, strict=True)):
        gold = {ref.strip().strip(".").lower() for ref in refs}
        if not gold <= set(DECISIONS):
            raise DataError(
                f"reward `decision_correctness` needs yes, no or maybe in column `answer`; row {index} has "
                f"{sorted(gold)}. Use it with pubmedqa-style data or choose another reward."
            )
        decision = extract_yes_no_maybe(answer_or_text(completion_text(completion)))
        scores.append(1.0 if decision is not None and decision in gold else 0.0)
    return scores


# ----------------------------------------------------------------------------------------------- format
def qa_reasoning_tags(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when `<reasoning>`, `</reasoning>`, `<answer>`, `</answer>` each occur exactly once, in that order,
    around non-blank content; else 0.0 (no partial credit, unlike `reasoning_tags`)."""
    return [1.0 if well_formed_blocks(completion_text(c)) is not None else 0.0 for c in completions]


def qa_multiline(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the last `<reasoning>...</reasoning>` block has at least 3 non-blank lines, else 0.0."""
    scores = []
    for completion in completions:
        reasoning = extract_tagged(completion_text(completion), "reasoning")
        lines = 0 if reasoning is None else non_empty_lines(reasoning)
        scores.append(1.0 if lines >= MIN_QA_REASONING_LINES else 0.0)
    return scores


def qa_structure(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the response is exactly one well-formed reasoning block then one answer block with only
    whitespace outside and between them (the check of `response_structure`, on a 0/1 scale), else 0.0."""
    return [1.0 if only_blocks(completion_text(c)) else 0.0 for c in completions]


def response_length(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the response, stripped of surrounding whitespace, has 50 to 2000 characters (inclusive),
    else 0.0: neither a bare answer without explanation nor a runaway generation."""
    low, high = LENGTH_WINDOW
    return [1.0 if low <= len(completion_text(c).strip()) <= high else 0.0 for c in completions]


SPECS: list[RewardSpec] = [
    RewardSpec(
        "exact_match",
        "1.0 when the answer (<answer> block, else the completion) equals any of `answers`/`answer` after "
        "SQuAD normalisation, else 0.0.",
        kind="correctness",
        fn=exact_match,
        references=ANY_OF,
        default_weight=1.0,
        max_value=1.0,
    ),
    RewardSpec(
        "token_f1",
        "Token F1 (0.0-1.0) between the normalised answer and the best of `answers`/`answer`.",
        kind="correctness",
        fn=token_f1,
        references=ANY_OF,
        default_weight=1.0,
        max_value=1.0,
    ),
    RewardSpec(
        "multiple_choice_letter",
        "1.0 when the option letter the answer picks is the letter in `answer`, else 0.0 (wrong, none, ambiguous).",
        kind="correctness",
        fn=multiple_choice_letter,
        references=("answer",),
        default_weight=1.0,
        max_value=1.0,
    ),
    RewardSpec(
        "decision_correctness",
        "1.0 when the yes/no/maybe decision of the answer equals `answer`, else 0.0 (wrong or none).",
        kind="correctness",
        fn=decision_correctness,
        references=("answer",),
        default_weight=1.0,
        max_value=1.0,
    ),
    RewardSpec(
        "qa_reasoning_tags",
        "1.0 when <reasoning>..</reasoning><answer>..</answer> are each present once, in order, non-empty; else 0.0.",
        kind="format",
        fn=qa_reasoning_tags,
        default_weight=FORMAT_WEIGHT,
        max_value=1.0,
    ),
    RewardSpec(
        "qa_multiline",
        "1.0 when the <reasoning> block has at least 3 non-blank lines, else 0.0.",
        kind="format",
        fn=qa_multiline,
        default_weight=FORMAT_WEIGHT,
        max_value=1.0,
    ),
    RewardSpec(
        "qa_structure",
        "1.0 when the response is exactly a reasoning block then an answer block, nothing else; else 0.0.",
        kind="format",
        fn=qa_structure,
        default_weight=FORMAT_WEIGHT,
        max_value=1.0,
    ),
    RewardSpec(
        "response_length",
        "1.0 when the stripped response has 50 to 2000 characters, else 0.0.",
        kind="format",
        fn=response_length,
        default_weight=FORMAT_WEIGHT,
        max_value=1.0,
    ),
]
