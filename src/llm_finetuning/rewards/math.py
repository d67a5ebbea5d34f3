"""Math rewards: a numeric answer graded against the reference, a `\\boxed{}` answer (MATH style), and four
small format rewards for the `<reasoning>...</reasoning>\\n<answer>...</answer>` layout.

Scale: a correct answer is worth 3.0 and each format reward at most 0.5 (2.0 for all four), so at the default
weights (all 1.0) a wrong or merely close answer with perfect format (at most 0.5 + 2.0 = 2.5) always totals
less than a correct answer with no format credit (3.0). `docs/rewards.md` lists every value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from llm_finetuning.errors import DataError
from llm_finetuning.rewards.base import RewardSpec, completion_text, references_at
from llm_finetuning.rewards.extract import (
    FINAL_MARK,
    extract_boxed,
    extract_final_answer,
    extract_tagged,
    non_empty_lines,
    normalize_math,
    numbers_equal,
    only_blocks,
    parse_number,
    tag_counts,
    well_formed_blocks,
)
from llm_finetuning.rewards.verify import math_equivalent

CORRECT, WITHIN_10, WITHIN_20, WRONG, NO_ANSWER, UNPARSABLE = 3.0, 0.5, 0.25, -1.0, 0.0, -0.5
BOUNDARY_SLACK = 1e-9
"""Relative errors of exactly 10% or 20% count as within, despite floating-point noise (72 * 1.1 = 79.2)."""

BATCH_KEYS = frozenset({"prompts", "completions", "completion_ids", "trainer_state"})


# ----------------------------------------------------------------------------------------------- helpers
def batch_references(columns: dict[str, Any], names: Sequence[str], reward: str, size: int) -> list[list[str]]:
    """The reference answers of each of `size` completions from the first of `names` present in `columns`.

    A batch with none of those columns is a configuration mistake (the reward would silently score every
    completion as unanswerable), so it raises `DataError` naming the columns; a row whose reference is empty
    gets `[]` and its reward scores 0.0.
    """
    if not any(columns.get(name) is not None for name in names):
        present = ", ".join(sorted(k for k in columns if k not in BATCH_KEYS)) or "none"
        wanted = " or ".join(f"`{name}`" for name in names)
        raise DataError(
            f"reward `{reward}` needs the dataset column {wanted} (the reference answer), but the batch has "
            f"columns: {present}. Train on data that keeps the reference (e.g. a named dataset's prompt_only "
            f"records) or remove `{reward}` from method.rewards."
        )
    return [references_at(columns, index, names) for index in range(size)]


def reference_answer(reference: str) -> str:
    """The final answer inside a reference: after the last `####` of a GSM8K solution, the last `\\boxed{}` of
    a MATH solution, else the reference itself."""
    marks = FINAL_MARK.findall(reference)
    if marks and marks[-1].strip():
        return marks[-1].strip()
    boxed = extract_boxed(reference)
    return boxed if boxed is not None else reference.strip()


def grade_number(prediction: float, reference: float) -> float:
    """3.0 when equal (`numbers_equal`), 0.5 within 10% relative error |p - r| / |r| (inclusive), 0.25 within
    20%, else -1.0. A reference of 0 has no relative scale: only an exact 0 scores, anything else -1.0."""
    if numbers_equal(prediction, reference):
        return CORRECT
    if reference == 0:
        return WRONG
    error = abs(prediction - reference) / abs(reference)
    if error <= 0.1 + BOUNDARY_SLACK:
        return WITHIN_10
    if error <= 0.2 + BOUNDARY_SLACK:
        return WITHIN_20
    return WRONG


def grade_answer(prediction: str | None, reference: str) -> float:
    """The `answer_correctness` value of one extracted answer against one reference (see that reward)."""
    if prediction is None:
        return NO_ANSWER
    gold_text = reference_answer(reference)
    # Strict: the last number of `\frac{\pi}{2}` or `2x + 1` is not the reference's value.
    gold = parse_number(gold_text, strict=True)
    if gold is None:
        # A non-numeric reference: only the same expression counts (written alike, or equal as mathematics).
        return CORRECT if same_math_answer(prediction, gold_text) else WRONG
    value = parse_number(prediction)
    if value is None:  # no plain number: `\frac{72}{2}` or `6 \cdot 12` may still be the reference's value
        return CORRECT if math_equivalent(prediction, gold_text) else UNPARSABLE
    return grade_number(value, gold)


def same_math_answer(prediction: str, reference: str) -> bool:
    """Numerically equal when both are plain numbers (`parse_number(strict=True)`); else equal as strings after
    `normalize_math` (so `0.5` = `\\frac{1}{2}` = `\\dfrac12`, `\\left(1,2\\right)` = `(1, 2)`), or else the
    same mathematical object for math-verify (`2\\sqrt3` = `2\\sqrt{3}`, `\\{1,2\\}` = `\\{2,1\\}`,
    `\\text{(C)}` = `C`), with a time limit; where math-verify cannot tell, the string rules decide."""
    left, right = parse_number(prediction, strict=True), parse_number(reference, strict=True)
    if left is not None and right is not None:
        return numbers_equal(left, right)
    if normalize_math(prediction) == normalize_math(reference):
        return True
    return math_equivalent(prediction, reference) is True


def _best(scores: list[float]) -> float:
    return max(scores) if scores else NO_ANSWER


# ----------------------------------------------------------------------------------------------- correctness
def answer_correctness(completions: list[Any], **columns: Any) -> list[float]:
    """Grades the final number against the reference column `answer` (a number, or a GSM8K solution ending
    in `#### N`; a list is any-of, the best grade counts).

    The answer is the last `<answer>` block, else the text after the last `####` (`extract_final_answer`);
    its last number is read by `parse_number` (thousands separators, currency, units, trailing zeros,
    fractions). Values: 3.0 equal (relative tolerance 1e-9); 0.5 within 10% relative error (inclusive);
    0.25 within 20%; -1.0 further off (and any non-zero answer to a reference of 0); -0.5 an answer without a
    number; 0.0 no answer (or no reference). A non-numeric reference scores 3.0 for the same expression after
    `normalize_math`, else -1.0 (the reference is numeric when it is one number as `parse_number(strict=True)`
    reads it: `72`, `1,080`, `$18`, `-3/4`, `\frac{3}{4}`; `18 dollars` is not).
    """
    references = batch_references(columns, ("answer",), "answer_correctness", len(completions))
    scores = []
    for completion, refs in zip(completions, references, strict=True):
        prediction = extract_final_answer(completion_text(completion))
        scores.append(_best([grade_answer(prediction, ref) for ref in refs]))
    return scores


def boxed_correctness(completions: list[Any], **columns: Any) -> list[float]:
    """MATH-style: the last `\\boxed{...}` of the completion against the reference column `answer` (its own
    last `\\boxed{}` when it has one; a list is any-of).

    Values: 3.0 the same answer (`same_math_answer`: numerically equal when both are plain numbers, else equal
    strings after stripping spaces, `$`, `\\left`/`\\right`, `\\!`, `dfrac` -> `frac` and a trailing `.`, else
    equal as mathematics for math-verify, within its time limit); -1.0 a different boxed answer; 0.0 no box (or
    an empty/unclosed one, or no reference).
    """
    references = batch_references(columns, ("answer",), "boxed_correctness", len(completions))
    scores = []
    for completion, refs in zip(completions, references, strict=True):
        boxed = extract_boxed(completion_text(completion))
        if boxed is None or not refs:
            scores.append(NO_ANSWER)
            continue
        same = any(same_math_answer(boxed, reference_answer(ref)) for ref in refs)
        scores.append(CORRECT if same else WRONG)
    return scores


# ----------------------------------------------------------------------------------------------- format
def reasoning_tags(completions: list[Any], **_: Any) -> list[float]:
    """Tags of the reasoning/answer layout. 0.5 when `<reasoning>`, `</reasoning>`, `<answer>`, `</answer>`
    each occur exactly once, in that order, around non-blank content; otherwise 0.1 for each of the four
    tags that occurs exactly once (0.0 to 0.4)."""
    scores = []
    for completion in completions:
        text = completion_text(completion)
        if well_formed_blocks(text) is not None:
            scores.append(0.5)
        else:
            scores.append(sum(count == 1 for count in tag_counts(text).values()) / 10)
    return scores


STEP_LINE = r"(?im)^[ \t]*[*#_]*[ \t]*(?:step[ \t]*\d+\b|\d{1,2}[.)](?=[ \t]))"


def step_lines(text: str) -> int:
    """Lines that start a numbered step: `Step 3: ...`, `**Step 3**`, `3. ...`, `3) ...`."""
    return len(re.findall(STEP_LINE, text))


def step_format(completions: list[Any], **_: Any) -> list[float]:
    """Numbered steps in the reasoning (the `<reasoning>` block when there is one, else the whole completion):
    0.5 for two or more step lines (`Step 1: ...`, `1. ...`, `1) ...`), 0.25 for one, 0.0 for none."""
    scores = []
    for completion in completions:
        text = completion_text(completion)
        reasoning = extract_tagged(text, "reasoning")
        steps = step_lines(text if reasoning is None else reasoning)
        scores.append(0.5 if steps >= 2 else 0.25 if steps == 1 else 0.0)
    return scores


def multiline_compliance(completions: list[Any], **_: Any) -> list[float]:
    """The reasoning spans several lines: 0.5 for three or more non-blank lines inside the last
    `<reasoning>...</reasoning>` block, 0.25 for two, 0.0 for one or none or no closed block."""
    scores = []
    for completion in completions:
        reasoning = extract_tagged(completion_text(completion), "reasoning")
        lines = 0 if reasoning is None else non_empty_lines(reasoning)
        scores.append(0.5 if lines >= 3 else 0.25 if lines == 2 else 0.0)
    return scores


def response_structure(completions: list[Any], **_: Any) -> list[float]:
    """The whole response is one reasoning block then one answer block: 0.5 when the layout is well-formed
    (as in `reasoning_tags`) and only whitespace stands outside and between the two blocks, else 0.0."""
    return [0.5 if only_blocks(completion_text(c)) else 0.0 for c in completions]


SPECS: list[RewardSpec] = [
    RewardSpec(
        "answer_correctness",
        "Final number (<answer> block, else `#### N`) against `answer` (number or GSM8K solution): 3.0 equal, "
        "0.5 within 10%, 0.25 within 20%, -1.0 wrong, -0.5 no number in the answer, 0.0 no answer.",
        kind="correctness",
        fn=answer_correctness,
        references=("answer",),
        default_weight=1.0,
        max_value=CORRECT,
    ),
    RewardSpec(
        "boxed_correctness",
        "Last \\boxed{} against `answer` (numeric when both are numbers, else the same normalised LaTeX or the "
        "same mathematical object for math-verify): 3.0 same, -1.0 different, 0.0 no box.",
        kind="correctness",
        fn=boxed_correctness,
        references=("answer",),
        default_weight=1.0,
        max_value=CORRECT,
    ),
    RewardSpec(
        "reasoning_tags",
        "0.5 when <reasoning>..</reasoning><answer>..</answer> are each present once, in order, non-empty; "
        "else 0.1 per tag present exactly once.",
        kind="format",
        fn=reasoning_tags,
        default_weight=1.0,
        max_value=0.5,
    ),
    RewardSpec(
        "step_format",
        "Numbered step lines (`Step 1:`, `1.`, `1)`) in the reasoning: 0.5 for two or more, 0.25 for one, 0.0 none.",
        kind="format",
        fn=step_format,
        default_weight=1.0,
        max_value=0.5,
    ),
    RewardSpec(
        "multiline_compliance",
        "Non-blank lines in the <reasoning> block: 0.5 for three or more, 0.25 for two, else 0.0.",
        kind="format",
        fn=multiline_compliance,
        default_weight=1.0,
        max_value=0.5,
    ),
    RewardSpec(
        "response_structure",
        "0.5 when the response is exactly a reasoning block then an answer block, nothing else; else 0.0.",
        kind="format",
        fn=response_structure,
        default_weight=1.0,
        max_value=0.5,
    ),
]
