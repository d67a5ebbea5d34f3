"""Math rewards against hand-worked values: every branch of answer_correctness and boxed_correctness, the four
format rewards, the TRL calling convention, the real GSM8K train file (every gold answer scores 3.0, perturbed
ones less), and the proof that correctness dominates format at the default weights."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from llm_finetuning.errors import DataError
from llm_finetuning.rewards.math import (
    SPECS,
    answer_correctness,
    boxed_correctness,
    grade_number,
    multiline_compliance,
    reasoning_tags,
    reference_answer,
    response_structure,
    same_math_answer,
    step_format,
)
from llm_finetuning.rewards.registry import registry
from tests.conftest import shared

pytestmark = pytest.mark.unit


def score(fn: Any, completion: Any, **columns: Any) -> float:
    """One completion through the batch convention (columns given as one value each)."""
    batch = {key: [value] for key, value in columns.items()}
    values = fn(prompts=["q"], completions=[completion], completion_ids=[[1, 2]], **batch)
    assert len(values) == 1 and isinstance(values[0], float)
    return values[0]


def tagged(answer: str, reasoning: str = "Step 1: add.\nStep 2: check.\nStep 3: done.") -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


# ----------------------------------------------------------------------------------------------- answer_correctness
@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        # exact, after normalisation
        ("<answer>72</answer>", "72", 3.0),
        ("<answer>72.00</answer>", "72", 3.0),
        ("<answer>$1,080</answer>", "1080", 3.0),
        ("<answer>1080</answer>", "Then 1,000 + 80 = 1,080.\n#### 1,080", 3.0),  # raw GSM8K solution
        ("<answer>72 apples</answer>", "72", 3.0),
        ("<answer>0.75</answer>", "3/4", 3.0),
        ("<answer>1 1/2 cups</answer>", "1.5", 3.0),
        ("<answer>-3</answer>", "-3", 3.0),
        ("<answer>0</answer>", "0", 3.0),
        ("<answer>So 5 + 3 = 8</answer>", "8", 3.0),  # the last number
        ("work...\n#### 72", "72", 3.0),  # #### fallback
        ("<answer> </answer>\n#### 72", "72", 3.0),  # an empty tag falls back too
        ("#### 72\n<answer>70</answer>", "72", 0.5),  # the tag wins over ####
        # within 10% (inclusive): 79.2 is exactly 10% above 72, 64.8 exactly 10% below
        ("<answer>79.2</answer>", "72", 0.5),
        ("<answer>64.8</answer>", "72", 0.5),
        ("<answer>75</answer>", "72", 0.5),
        # within 20% (inclusive): 86.4 = 72 * 1.2; 80 is 11.1% off
        ("<answer>86.4</answer>", "72", 0.25),
        ("<answer>80</answer>", "72", 0.25),
        ("<answer>-0.85</answer>", "-1", 0.25),  # 15% off a negative reference
        # wrong
        ("<answer>86.5</answer>", "72", -1.0),
        ("<answer>-72</answer>", "72", -1.0),
        ("<answer>1</answer>", "0", -1.0),  # a reference of 0 has no relative scale
        ("<answer>0.0000001</answer>", "0", -1.0),
        # unparsable / no answer
        ("<answer>seventy-two</answer>", "72", -0.5),
        ("#### many", "72", -0.5),
        ("The answer is 72.", "72", 0.0),  # neither a tag nor ####
        ("<answer>72", "72", 0.0),  # cut off
        ("", "72", 0.0),
        # a non-numeric reference is compared as a normalised expression
        (r"<answer>\dfrac{\pi}{2}</answer>", r"\frac{\pi}{2}", 3.0),
        (r"<answer>\frac{\pi}{3}</answer>", r"\frac{\pi}{2}", -1.0),
        ("<answer>2</answer>", r"\frac{\pi}{2}", -1.0),  # not the reference's "last number" 2
    ],
)
def test_answer_correctness(completion: str, gold: str, expected: float) -> None:
    assert score(answer_correctness, completion, answer=gold) == expected


def test_answer_correctness_any_of_and_missing_references() -> None:
    values = answer_correctness(
        completions=["<answer>10</answer>", "<answer>10</answer>", "<answer>10</answer>"],
        answer=[["9.5", "10"], None, []],
    )
    assert values == [3.0, 0.0, 0.0]  # the best reference; no reference scores 0.0


def test_answer_correctness_reads_conversational_completions_and_ignores_unknown_columns() -> None:
    completions = [
        [{"role": "assistant", "content": "<answer>72</answer>"}],
        {"role": "assistant", "content": "#### 70"},
        [{"role": "assistant", "content": "<reasoning>r</reasoning>"}, {"role": "assistant", "content": "#### 99"}],
    ]
    values = answer_correctness(completions=completions, answer=["72", "72", "72"], question=["x"] * 3, trainer_state=1)
    assert values == [3.0, 0.5, -1.0]


def test_answer_correctness_without_the_column_names_it() -> None:
    with pytest.raises(DataError, match=r"`answer`.*question.*remove `answer_correctness`"):
        answer_correctness(prompts=["p"], completions=["#### 1"], question=["q"])


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [(100, 100, 3.0), (110, 100, 0.5), (90, 100, 0.5), (120, 100, 0.25), (80, 100, 0.25), (121, 100, -1.0)],
)
def test_grade_number_boundaries(prediction: float, reference: float, expected: float) -> None:
    assert grade_number(prediction, reference) == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [("a\n#### 1,080", "1,080"), (r"so $\boxed{\frac{1}{2}}$", r"\frac{1}{2}"), (" 72 ", "72")],
)
def test_reference_answer(reference: str, expected: str) -> None:
    assert reference_answer(reference) == expected


# ----------------------------------------------------------------------------------------------- GSM8K
def test_every_gsm8k_train_answer_scores_full_and_perturbed_answers_less() -> None:
    rows = [json.loads(line) for line in shared("gsm8k/train.jsonl").read_text().splitlines()]
    assert len(rows) == 7473
    solutions, finals = zip(*(row["answer"].rpartition("####")[::2] for row in rows), strict=True)
    golds = [row["answer"] for row in rows]
    finals = [final.strip() for final in finals]

    def render(answers: list[str]) -> list[str]:
        pairs = zip(solutions, answers, strict=True)
        return [f"<reasoning>{s.strip()}</reasoning>\n<answer>{a}</answer>" for s, a in pairs]

    assert answer_correctness(completions=render(finals), answer=golds) == [3.0] * len(rows)

    numbers = [int(final.replace(",", "")) for final in finals]  # every GSM8K final answer is an integer
    plus_one = answer_correctness(completions=render([str(n + 1) for n in numbers]), answer=golds)
    # N + 1 is off by 1/|N|: within 10% when |N| >= 10, within 20% when |N| >= 5, else wrong.
    expected = [0.5 if abs(n) >= 10 else 0.25 if abs(n) >= 5 else -1.0 for n in numbers]
    assert plus_one == expected
    assert Counter(plus_one)[0.5] > 6000

    scaled = answer_correctness(completions=render([str(n * 1.15) for n in numbers]), answer=golds)
    # 15% off: within 20%; a gold 0 stays 0 when scaled, so it is the one row that keeps 3.0.
    assert scaled == [3.0 if n == 0 else 0.25 for n in numbers]
    assert numbers.count(0) == 1

    worded = answer_correctness(completions=render(["the same as before"] * len(rows)), answer=golds)
    assert worded == [-0.5] * len(rows)


# ----------------------------------------------------------------------------------------------- boxed_correctness
@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$", "0.5", 3.0),  # numerically
        (r"\boxed{\dfrac12}", r"\frac{1}{2}", 3.0),
        (r"\boxed{1{,}000}", "1000", 3.0),
        (r"\boxed{10\text{ cm}}", "10", 3.0),
        (r"\boxed{x = 5}", "5", 3.0),
        (r"\boxed{\left( 1, 2 \right)}", "(1,2)", 3.0),  # as strings
        (r"\boxed{\dfrac{\sqrt{3}}{2}.}", r"\frac{\sqrt{3}}{2}", 3.0),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{3}}{2}", -1.0),  # both end in 2, but differ
        (r"\boxed{3}", "4", -1.0),
        (r"\boxed{1} and finally \boxed{2}", "1", -1.0),  # the last box
        (r"The answer is 0.5", "0.5", 0.0),  # no box
        (r"\boxed{}", "0.5", 0.0),
        (r"\boxed{0.5", "0.5", 0.0),  # unclosed
        (r"\boxed{7}", r"The sum is $\boxed{7}$.", 3.0),  # a MATH solution as reference
    ],
)
def test_boxed_correctness(completion: str, gold: str, expected: float) -> None:
    assert score(boxed_correctness, completion, answer=gold) == expected


def test_boxed_correctness_any_of_and_no_reference() -> None:
    values = boxed_correctness(completions=[r"\boxed{2}", r"\boxed{2}"], answer=[["1", "2"], None])
    assert values == [3.0, 0.0]


def test_same_math_answer() -> None:
    assert same_math_answer("0.25", r"\frac14")
    assert not same_math_answer("x^2", "x^3")


# ----------------------------------------------------------------------------------------------- format rewards
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (tagged("72"), 0.5),
        ("<reasoning>r</reasoning><answer>72</answer>", 0.5),
        ("Preface <reasoning>r</reasoning> <answer>72</answer> trailer", 0.5),  # outside text: structure's job
        ("<answer>72</answer><reasoning>r</reasoning>", 0.4),  # all four once, wrong order
        ("<reasoning></reasoning><answer>72</answer>", 0.4),  # empty reasoning
        ("<reasoning>r</reasoning><answer>72", 0.3),
        ("<answer>72</answer>", 0.2),
        ("<reasoning>r<reasoning>r</reasoning><answer>72</answer>", 0.3),  # one tag twice: no credit for it
        ("<reasoning>", 0.1),
        ("#### 72", 0.0),
    ],
)
def test_reasoning_tags(completion: str, expected: float) -> None:
    assert score(reasoning_tags, completion) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (tagged("72"), 0.5),  # three `Step N:` lines
        (tagged("72", "1. add\n2) carry"), 0.5),
        (tagged("72", "**Step 1** add\nstep 2 - carry"), 0.5),
        (tagged("72", "Step 1: add everything"), 0.25),
        (tagged("72", "Add 3.5 and 1.5.\n2.5 is half of 5."), 0.0),  # decimals are not step numbers
        (tagged("72", "We add.\nThen check."), 0.0),
        ("Step 1: add\nStep 2: check\n#### 72", 0.5),  # no reasoning block: the whole completion
        ("Step 1: outside\nStep 2: outside\n" + tagged("72", "just prose"), 0.0),  # the block, when present
    ],
)
def test_step_format(completion: str, expected: float) -> None:
    assert score(step_format, completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (tagged("72"), 0.5),
        (tagged("72", "a\n\n  \nb\nc"), 0.5),  # blank lines do not count
        (tagged("72", "a\nb"), 0.25),
        (tagged("72", "a b c"), 0.0),
        ("a\nb\nc\n#### 72", 0.0),  # no reasoning block
        ("<reasoning>\na\nb\nc", 0.0),  # never closed
    ],
)
def test_multiline_compliance(completion: str, expected: float) -> None:
    assert score(multiline_compliance, completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (tagged("72"), 0.5),
        ("\n" + tagged("72") + "\n", 0.5),
        ("Sure. " + tagged("72"), 0.0),
        (tagged("72") + "\nHope this helps", 0.0),
        ("<reasoning>r</reasoning>\nso\n<answer>72</answer>", 0.0),
        ("<answer>72</answer>", 0.0),
    ],
)
def test_response_structure(completion: str, expected: float) -> None:
    assert score(response_structure, completion) == expected


# ----------------------------------------------------------------------------------------------- dominance
MATH_PIPELINE = ("answer_correctness", "reasoning_tags", "step_format", "multiline_compliance", "response_structure")


def weighted_total(completion: str, gold: str) -> float:
    specs = registry()
    return sum(specs[name].default_weight * score(specs[name].fn, completion, answer=gold) for name in MATH_PIPELINE)


def test_correctness_dominates_format_at_the_default_weights() -> None:
    gold = "Natalia sold 48 + 24 = 72 clips.\n#### 72"
    perfect_but_not_right = [tagged(a) for a in ("99", "79", "65", "86", "58", "-72", "0", "many", "72 or 90")]
    right_without_format = ["<answer>72</answer>", "#### 72", "Natalia sold 72.\n#### 72", "<answer>$72.00</answer>"]
    format_names = MATH_PIPELINE[1:]
    specs = registry()
    # The crafted wrong answers really earn every format point (2.0 at weight 1) ...
    for completion in perfect_but_not_right:
        earned = sum(specs[name].default_weight * score(specs[name].fn, completion) for name in format_names)
        assert earned == sum(specs[name].default_weight * specs[name].max_value for name in format_names) == 2.0
    wrong_totals = [weighted_total(c, gold) for c in perfect_but_not_right]
    right_totals = [weighted_total(c, gold) for c in right_without_format]
    # ... and the best of them (79, within 10%: 0.5 + 2.0) still totals below the worst right answer (3.0).
    assert max(wrong_totals) == 2.5
    assert min(right_totals) == 3.0
    assert max(wrong_totals) < min(right_totals)


def test_dominance_holds_for_any_format_outcome() -> None:
    # The bound behind the test above, from the specs: all format rewards at their maximum plus the best
    # not-equal grade (0.5) stays below a correct answer with no format credit.
    specs = registry()
    correctness = specs["answer_correctness"]
    format_max = sum(specs[n].default_weight * specs[n].max_value for n in MATH_PIPELINE[1:])
    assert correctness.default_weight * 0.5 + format_max < correctness.default_weight * correctness.max_value


# ----------------------------------------------------------------------------------------------- contract
def test_specs_are_registered_and_complete() -> None:
    specs = registry()
    names = [spec.name for spec in SPECS]
    assert names == [
        "answer_correctness",
        "boxed_correctness",
        "reasoning_tags",
        "step_format",
        "multiline_compliance",
        "response_structure",
    ]
    for spec in SPECS:
        assert specs[spec.name] is spec
        assert spec.fn is not None and spec.fn.__doc__ and spec.description
        assert spec.kind == ("correctness" if spec.name.endswith("correctness") else "format")
        assert spec.references == (("answer",) if spec.kind == "correctness" else ())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_reward_returns_one_bounded_float_per_completion(spec: Any) -> None:
    completions = [
        tagged("72"),
        r"\boxed{72}",
        "",
        [{"role": "assistant", "content": "#### 1,080"}],
        {"role": "assistant", "content": None},
        "<answer>" * 50,
    ]
    values = spec.fn(prompts=["p"] * 6, completions=completions, answer=["72"] * 6, anything_else=[0] * 6)
    assert len(values) == len(completions)
    assert all(isinstance(v, float) and -1.0 <= v <= spec.max_value for v in values)
