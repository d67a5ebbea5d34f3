"""Math answers compared as mathematics (math-verify): a table of equivalent answers written differently that
`boxed_correctness` must score correct, and of different answers it must score wrong; the string rules decide
where the verifier cannot; a time limit per comparison."""

from __future__ import annotations

import threading
import time

import pytest

from llm_finetuning.rewards.math import answer_correctness, boxed_correctness, same_math_answer
from llm_finetuning.rewards.verify import MAX_CHARS, math_equivalent

pytest.importorskip("math_verify")

EQUIVALENT = [
    (r"2\sqrt{3}", r"2\sqrt3"),
    (r"\text{(C)}", "C"),
    (r"\{1,2\}", r"\{2,1\}"),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"),
    (r"\frac{1}{2}", "0.5"),
    (r"\frac12", r"\dfrac{1}{2}"),
    (r"\frac{\pi}{2}", r"\pi/2"),
    (r"x^2+1", r"1+x^2"),
    (r"(x+1)^2", r"x^2+2x+1"),
    (r"2x+3", r"3+2x"),
    (r"\sqrt{8}", r"2\sqrt{2}"),
    (r"\sqrt{12}", r"2\sqrt{3}"),
    (r"\frac{2}{4}", r"\frac{1}{2}"),
    (r"\frac{6}{8}", r"0.75"),
    (r"3.0", "3"),
    (r"1{,}000", "1000"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
    (r"2^{10}", "1024"),
    (r"\left(1, 2\right)", "(1,2)"),
    (r"[0,1]", r"\left[0, 1\right]"),
    (r"\{3, 1, 2\}", r"\{1, 2, 3\}"),
    (r"\frac{3}{\sqrt{3}}", r"\sqrt{3}"),
    (r"e^{0}", "1"),
    (r"\log_2 8", "3"),
    (r"\sin^2 x + \cos^2 x", "1"),
    (r"4\pi", r"\pi \cdot 4"),
    (r"\frac{a}{b}", r"a/b"),
    (r"-\frac{1}{3}", r"\frac{-1}{3}"),
    (r"x=5", "5"),
    (r"\infty", r"\infty"),
    (r"2 \times 3", "6"),
    (r"\binom{5}{2}", "10"),
    (r"5!", "120"),
    (r"\text{(B)}", r"\textbf{(B)}"),
    (r"\frac{x^2-1}{x-1}", r"x+1"),
    (r"\frac{7}{2}", "3.5"),
    (r"3^2+4^2", "25"),
    (r"\sqrt{49}", "7"),
    (r"\frac{1}{4}+\frac{1}{4}", r"\frac12"),
    (r"(-1, 3)", r"\left(-1,3\right)"),
]
# Left out on purpose, as math-verify reads them: a percentage equals its number (`10\%` = `10`, a choice the
# verifier makes for graders), `3\frac{1}{3}` is a product, not a mixed number, and `0.\overline{3}` is not
# parsed.
DIFFERENT = [
    ("3", "4"),
    (r"2\sqrt{3}", r"3\sqrt{2}"),
    (r"\frac{1}{2}", r"\frac{1}{3}"),
    (r"\text{(C)}", "D"),
    (r"\{1,2\}", r"\{1,3\}"),
    (r"x^2+1", r"x^2-1"),
    (r"(1,2)", r"(2,1)"),
    (r"\sqrt{2}", "2"),
    (r"\pi", "3.14"),
    (r"\frac{22}{7}", r"\pi"),
    (r"-5", "5"),
    (r"\frac{\pi}{3}", r"\frac{\pi}{6}"),
    (r"2x", r"2y"),
    (r"[0,1]", r"(0,1)"),
    (r"e", "2.718"),
    (r"\infty", r"-\infty"),
    (r"1000", "100"),
    (r"\frac{3}{4}", "0.7"),
    (r"\sqrt{3}", r"\frac{\sqrt{3}}{2}"),
    (r"x=5", "x=6"),
]


def boxed(text: str) -> str:
    return f"So the answer is $\\boxed{{{text}}}$."


@pytest.mark.parametrize(("answer", "reference"), EQUIVALENT)
def test_equivalent_answers_score_correct(answer, reference):
    assert len(EQUIVALENT) >= 40
    assert boxed_correctness(completions=[boxed(answer)], answer=[reference]) == [3.0]
    assert boxed_correctness(completions=[boxed(reference)], answer=[answer]) == [3.0]  # both ways


@pytest.mark.parametrize(("answer", "reference"), DIFFERENT)
def test_different_answers_score_wrong(answer, reference):
    assert len(DIFFERENT) >= 20
    assert boxed_correctness(completions=[boxed(answer)], answer=[reference]) == [-1.0]


def test_non_numeric_gsm8k_style_reference_and_an_unplain_number_use_the_verifier():
    # A reference that is an expression, and an answer that is a fraction of the reference's value.
    assert answer_correctness(completions=[r"<answer>2\sqrt3</answer>"], answer=[r"#### 2\sqrt{3}"]) == [3.0]
    assert answer_correctness(completions=[r"<answer>\frac{144}{2}</answer>"], answer=["#### 72"]) == [3.0]
    assert answer_correctness(completions=["<answer>the same as before</answer>"], answer=["#### 72"]) == [-0.5]


def test_the_string_rules_decide_where_the_verifier_cannot(monkeypatch):
    import llm_finetuning.rewards.verify as verify

    monkeypatch.setattr(verify, "_verifier", lambda: None)  # not installed
    math_equivalent.cache_clear()
    try:
        assert math_equivalent("2", "2") is None
        assert same_math_answer(r"\dfrac12", "0.5") and not same_math_answer(r"2\sqrt3", r"2\sqrt{3}")
    finally:
        math_equivalent.cache_clear()


def test_each_comparison_has_a_time_limit():
    huge = "+".join(f"x^{{{n}}}" for n in range(1, 400))  # slow for sympy, not a real answer
    started = time.monotonic()
    result = math_equivalent(f"({huge})^{{40}}", f"({huge})^{{41}}")
    assert time.monotonic() - started < 15 and result in (None, False)


def test_off_the_main_thread_long_answers_are_not_compared():
    found = []
    worker = threading.Thread(target=lambda: found.append(math_equivalent("1+" * MAX_CHARS + "1", "2")))
    worker.start()
    worker.join()
    assert found == [None]
    short = []
    worker = threading.Thread(target=lambda: short.append(math_equivalent(r"2\sqrt3", r"2\sqrt{3}")))
    worker.start()
    worker.join()
    assert short == [True]
