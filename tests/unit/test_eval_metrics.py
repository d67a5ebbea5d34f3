"""Evaluation metrics and task scorers against hand-computed values: mean and standard error, ROUGE-1/2/L,
corpus and sentence BLEU (n-gram precisions and brevity penalty worked by hand), perplexity, and each task's
scoring of an output (the prediction is what the reward library's extractor reads)."""

from __future__ import annotations

import math

import pytest

from llm_finetuning.evaluation import metrics
from llm_finetuning.evaluation.tasks import (
    Example,
    score_boxed,
    score_choice,
    score_decision,
    score_gsm8k,
    score_overlap,
    score_short_answer,
)

pytestmark = pytest.mark.unit


def test_mean_and_standard_error_by_hand():
    # values 1, 0, 1, 1: mean 0.75, sample variance ((.25^2)*3 + .75^2) / 3 = 0.25, stderr sqrt(0.25 / 4) = 0.25
    assert metrics.mean_and_stderr([1, 0, 1, 1]) == pytest.approx((0.75, 0.25))
    assert metrics.mean_and_stderr([0.4]) == (0.4, 0.0)
    mean, stderr = metrics.mean_and_stderr([])
    assert math.isnan(mean) and math.isnan(stderr)
    summary = metrics.summarise([{"acc": 1.0}, {"acc": 0.0}], ["acc"])
    assert summary == pytest.approx({"acc": 0.5, "acc_stderr": math.sqrt(0.5 / 2)})


def test_rouge_by_hand():
    # prediction 6 words, reference 5; ROUGE-1: 5 shared words, P = 5/6, R = 5/5 -> F = 10/11.
    # ROUGE-2: prediction bigrams the-cat cat-sat sat-on on-the the-mat, reference the-cat cat-on on-the the-mat:
    # 3 shared, P = 3/5, R = 3/4 -> F = 2/3. ROUGE-L: LCS "the cat on the mat" = 5 -> F = 10/11.
    scores = metrics.rouge("the cat sat on the mat", "the cat on the mat")
    assert scores == pytest.approx({"rouge1": 10 / 11, "rouge2": 2 / 3, "rougeL": 10 / 11})
    assert metrics.rouge("Cats!", "cat") == pytest.approx({"rouge1": 1.0, "rouge2": 0.0, "rougeL": 1.0})  # stemmed
    assert metrics.rouge("", "the cat")["rougeL"] == 0.0


def test_bleu_by_hand():
    # One pair: n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP = 1): BLEU = (1/12)^(1/4) = 53.7285.
    assert metrics.corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        100 * (1 / 12) ** 0.25, abs=1e-3
    )
    # A short hypothesis: every precision 1, BP = exp(1 - 6/4).
    assert metrics.corpus_bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(
        100 * math.exp(-0.5), abs=1e-3
    )
    # Corpus BLEU sums counts over pairs: precisions 9/10, 6/8, 4/6, 2/4, lengths 10 vs 12 (BP = exp(-0.2)),
    # which is not the mean of the two sentence scores.
    corpus = metrics.corpus_bleu(
        ["the cat sat on the mat", "the cat sat on"], ["the cat sat on a mat", "the cat sat on the mat"]
    )
    assert corpus == pytest.approx(100 * math.exp(-0.2) * (0.9 * 0.75 * (4 / 6) * 0.5) ** 0.25, abs=1e-3)
    assert metrics.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)


def test_perplexity_is_exp_of_the_token_mean():
    assert metrics.perplexity(12.0, 4) == pytest.approx(math.exp(3.0))
    assert math.isnan(metrics.perplexity(0.0, 0))


def example(**gold) -> Example:
    return Example(id="f:1", prompt=[{"role": "user", "content": "q"}], gold=gold)


def test_gsm8k_scoring_reads_the_final_answer_like_the_reward():
    scored = score_gsm8k("3 boxes of 360 each.\n#### 1,080", example(answer="1080"))
    assert scored == {"prediction": "1,080", "reference": "1080", "accuracy": 1.0, "accuracy_flexible": 1.0}
    # No `####` line: no strict answer, but the last number is right.
    scored = score_gsm8k("So she has 72 apples.", example(answer="72"))
    assert (scored["prediction"], scored["accuracy"], scored["accuracy_flexible"]) == (None, 0.0, 1.0)
    # Within 10% earns the reward partial credit, but is not accurate.
    assert score_gsm8k("#### 75", example(answer="72"))["accuracy"] == 0.0
    assert score_gsm8k("<answer>72</answer>", example(answer="72"))["accuracy"] == 1.0


def test_boxed_choice_decision_and_short_answer_scoring():
    boxed = score_boxed("so \\boxed{\\frac{1}{2}}.", example(answer="0.5"))
    assert (boxed["prediction"], boxed["accuracy"]) == ("\\frac{1}{2}", 1.0)
    assert score_boxed("no box: 0.5", example(answer="0.5"))["accuracy"] == 0.0

    choice = score_choice("Reasoning...\nThe answer is (C).", example(answer="C"))
    assert (choice["prediction"], choice["accuracy"]) == ("C", 1.0)
    assert score_choice("B. Pneumonia", example(answer="C")) == {"prediction": "B", "reference": "C", "accuracy": 0.0}

    decision = score_decision("The abstract shows a small effect, so maybe.", example(answer="maybe"))
    assert (decision["prediction"], decision["accuracy"]) == ("maybe", 1.0)
    assert score_decision("No significant difference was found.", example(answer="no"))["accuracy"] == 0.0

    # Any-of answers: EM against the best; F1 "Eiffel" vs "Eiffel Tower": P = 1, R = 1/2 -> 2/3.
    short = score_short_answer("<answer>The Eiffel Tower</answer>", example(answers=["Eiffel Tower", "la tour"]))
    assert (short["prediction"], short["exact_match"], short["f1"]) == ("The Eiffel Tower", 1.0, 1.0)
    partial = score_short_answer("Eiffel", example(answer="Eiffel Tower"))
    assert partial["exact_match"] == 0.0 and partial["f1"] == pytest.approx(2 / 3)
    assert partial["reference"] == ["Eiffel Tower"]


def test_overlap_scoring_uses_the_target_text():
    ex = Example(id="f:1", target="the cat on the mat")
    scored = score_overlap("the cat sat on the mat", ex)
    assert scored["rougeL"] == pytest.approx(10 / 11) and scored["reference"] == "the cat on the mat"
    assert scored["sentence_bleu"] == pytest.approx(metrics.sentence_bleu("the cat sat on the mat", ex.target))
