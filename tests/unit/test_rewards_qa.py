"""QA rewards against hand-worked values: exact match and token F1 over any-of references, the multiple-choice
letter, the yes/no/maybe decision, the binary multi-hop/medical format rewards, the proof that correctness
dominates format at the default weights, and the registry listing every reward once."""

from __future__ import annotations

from typing import Any

import pytest

from llm_finetuning.errors import DataError
from llm_finetuning.rewards import math as math_rewards
from llm_finetuning.rewards import qa
from llm_finetuning.rewards.qa import (
    SPECS,
    decision_correctness,
    exact_match,
    multiple_choice_letter,
    qa_multiline,
    qa_reasoning_tags,
    qa_structure,
    response_length,
    token_f1,
)
from llm_finetuning.rewards.registry import registry

pytestmark = pytest.mark.unit


def score(fn: Any, completion: Any, **columns: Any) -> float:
    values = fn(prompts=["q"], completions=[completion], **{k: [v] for k, v in columns.items()})
    assert len(values) == 1 and isinstance(values[0], float)
    return values[0]


REASONING = "The film was directed by Jane Doe.\nJane Doe was born in Paris.\nSo the birthplace is Paris."


def tagged(answer: str, reasoning: str = REASONING) -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


# ----------------------------------------------------------------------------------------------- short answers
@pytest.mark.parametrize(
    ("completion", "columns", "expected"),
    [
        ("Paris", {"answer": "Paris"}, 1.0),
        ("the paris.", {"answer": "Paris"}, 1.0),  # normalised
        (tagged("Paris"), {"answer": "Paris"}, 1.0),  # the answer block, not the reasoning
        ("I believe it is Paris", {"answer": "Paris"}, 0.0),  # the whole completion without a block
        ("<answer></answer> Paris", {"answer": "Paris"}, 0.0),  # an empty block is the answer
        ("Lutetia", {"answers": ["Paris", "Lutetia"]}, 1.0),  # any of
        ("Lutetia", {"answers": ["Paris"], "answer": "Lutetia"}, 0.0),  # `answers` comes first
        ("Paris", {"answers": []}, 0.0),
        ("Paris", {"answers": None}, 0.0),
    ],
)
def test_exact_match(completion: str, columns: dict[str, Any], expected: float) -> None:
    assert score(exact_match, completion, **columns) == expected


@pytest.mark.parametrize(
    ("completion", "columns", "expected"),
    [
        ("Paris", {"answer": "Paris"}, 1.0),
        # [paris, france] vs [paris]: P = 1/2, R = 1, F1 = 2/3
        (tagged("Paris, France"), {"answer": "Paris"}, 2 / 3),
        # [new, york, city] vs [new, york]: P = 2/3, R = 1, F1 = 0.8; vs [nyc]: 0
        ("New York City", {"answers": ["NYC", "New York"]}, 0.8),
        ("London", {"answer": "Paris"}, 0.0),
        ("Paris", {"answers": []}, 0.0),
    ],
)
def test_token_f1(completion: str, columns: dict[str, Any], expected: float) -> None:
    assert score(token_f1, completion, **columns) == pytest.approx(expected, abs=1e-12)


def test_short_answer_rewards_need_a_reference_column() -> None:
    for fn, name in ((exact_match, "exact_match"), (token_f1, "token_f1")):
        with pytest.raises(DataError, match=rf"`answers` or `answer`.*remove `{name}`"):
            fn(prompts=["p"], completions=["x"], question=["q"])


# ----------------------------------------------------------------------------------------------- choices
@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("C", "C", 1.0),
        ("The answer is C.", "C", 1.0),
        ("C. Pneumonia", "C", 1.0),  # the MedQA SFT target's shape
        (tagged("(B)", "A patient with fever.\nOption A is unlikely.\nSo B."), "B", 1.0),  # the block only
        ("The answer is D", "C", 0.0),
        ("A patient presents with fever.", "A", 0.0),  # the article is not a choice
        ("Between B and D", "B", 0.0),  # ambiguous
        ("", "C", 0.0),
        ("The answer is F", "F", 1.0),  # a sixth option: F is read because the reference goes that far
        ("The answer is c", " c ", 0.0),  # the statement needs an upper-case letter ...
        ("c", " c ", 1.0),  # ... a lone letter does not; the reference is normalised too
    ],
)
def test_multiple_choice_letter(completion: str, gold: str, expected: float) -> None:
    assert score(multiple_choice_letter, completion, answer=gold) == expected


def test_multiple_choice_letter_rejects_a_non_letter_reference_and_skips_empty_ones() -> None:
    with pytest.raises(DataError, match=r"option letter in column `answer`; row 1 has `Pneumonia`"):
        multiple_choice_letter(completions=["A", "B"], answer=["A", "Pneumonia"])
    assert multiple_choice_letter(completions=["A"], answer=[None]) == [0.0]


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("The abstract shows a benefit.\n\nThe answer is yes.", "yes", 1.0),
        (tagged("no"), "no", 1.0),
        ("Maybe.", "MAYBE", 1.0),
        ("The answer is no.", "yes", 0.0),
        ("No significant difference was found.", "no", 0.0),  # not a decision
        ("", "maybe", 0.0),
    ],
)
def test_decision_correctness(completion: str, gold: str, expected: float) -> None:
    assert score(decision_correctness, completion, answer=gold) == expected


def test_decision_correctness_rejects_other_references() -> None:
    with pytest.raises(DataError, match=r"yes, no or maybe in column `answer`; row 0"):
        decision_correctness(completions=["yes"], answer=["C"])


# ----------------------------------------------------------------------------------------------- format
@pytest.mark.parametrize(
    ("completion", "tags", "multiline", "structure"),
    [
        (tagged("Paris"), 1.0, 1.0, 1.0),
        ("Sure. " + tagged("Paris"), 1.0, 1.0, 0.0),  # text outside: tags fine, structure not
        (tagged("Paris", "one line"), 1.0, 0.0, 1.0),
        (tagged("Paris", "one\n\ntwo"), 1.0, 0.0, 1.0),  # two non-blank lines: under the threshold of 3
        ("<answer>Paris</answer><reasoning>a\nb\nc</reasoning>", 0.0, 1.0, 0.0),  # wrong order
        ("<reasoning>a\nb\nc</reasoning><answer></answer>", 0.0, 1.0, 0.0),  # empty answer
        ("<answer>Paris</answer>", 0.0, 0.0, 0.0),
        ("Paris", 0.0, 0.0, 0.0),
    ],
)
def test_qa_format_rewards(completion: str, tags: float, multiline: float, structure: float) -> None:
    assert score(qa_reasoning_tags, completion) == tags
    assert score(qa_multiline, completion) == multiline
    assert score(qa_structure, completion) == structure


@pytest.mark.parametrize(
    ("completion", "expected"),
    [("x" * 49, 0.0), ("x" * 50, 1.0), ("  " + "x" * 50 + "\n\n", 1.0), ("x" * 2000, 1.0), ("x" * 2001, 0.0)],
)
def test_response_length_window(completion: str, expected: float) -> None:
    assert score(response_length, completion) == expected


def test_format_rewards_read_conversational_completions() -> None:
    message = [{"role": "assistant", "content": tagged("Paris")}]
    assert [score(fn, message) for fn in (qa_reasoning_tags, qa_multiline, qa_structure, response_length)] == [1.0] * 4


# ----------------------------------------------------------------------------------------------- dominance
QA_FORMAT = ("qa_reasoning_tags", "qa_multiline", "qa_structure", "response_length")


@pytest.mark.parametrize(
    ("correctness", "gold", "wrong", "right"),
    [
        ("exact_match", {"answer": "Paris"}, ["London", "Lyon, France"], ["Paris", "<answer>Paris</answer>"]),
        ("token_f1", {"answers": ["Paris"]}, ["London", "Rome"], ["Paris", "<answer>the Paris</answer>"]),
        ("multiple_choice_letter", {"answer": "C"}, ["The answer is B", "D"], ["C", "<answer>C</answer>"]),
        ("decision_correctness", {"answer": "yes"}, ["The answer is no.", "maybe"], ["Yes", "<answer>yes</answer>"]),
    ],
)
def test_correctness_dominates_format_at_the_default_weights(
    correctness: str, gold: dict[str, Any], wrong: list[str], right: list[str]
) -> None:
    specs = registry()

    def total(completion: str) -> float:
        names = (correctness, *QA_FORMAT)
        return sum(specs[n].default_weight * score(specs[n].fn, completion, **gold) for n in names)

    perfect_but_wrong = [tagged(answer) for answer in wrong]
    for completion in perfect_but_wrong:  # every format point is earned: 4 x 0.2
        assert sum(specs[n].default_weight * score(specs[n].fn, completion) for n in QA_FORMAT) == pytest.approx(0.8)
    assert max(map(total, perfect_but_wrong)) == pytest.approx(0.8)
    assert min(map(total, right)) == 1.0
    assert max(map(total, perfect_but_wrong)) < min(map(total, right))


# ----------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_reward_once_with_its_contract() -> None:
    specs = registry()
    ours = [*math_rewards.SPECS, *qa.SPECS]
    names = [spec.name for spec in ours]
    assert len(names) == len(set(names)) == 14
    assert set(names) <= set(specs)
    assert [spec.name for spec in SPECS] == [
        "exact_match",
        "token_f1",
        "multiple_choice_letter",
        "decision_correctness",
        *QA_FORMAT,
    ]
    for spec in SPECS:
        assert specs[spec.name] is spec and spec.fn is not None and spec.fn.__doc__
        assert spec.max_value == 1.0
        if spec.kind == "correctness":
            assert spec.references and spec.default_weight == 1.0
        else:
            assert spec.kind == "format" and spec.references == () and spec.default_weight == 0.2


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_reward_returns_one_bounded_float_per_completion(spec: Any) -> None:
    completions = [tagged("C"), "yes", "", [{"role": "assistant", "content": "The answer is C"}], "x" * 3000]
    references = "yes" if spec.name == "decision_correctness" else "C"
    values = spec.fn(prompts=["p"] * 5, completions=completions, answer=[references] * 5, other=[1] * 5)
    assert len(values) == len(completions)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
