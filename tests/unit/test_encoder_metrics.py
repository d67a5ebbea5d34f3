"""Classification and retrieval metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from llm_finetuning.data.formats import RowError, to_record
from llm_finetuning.evaluation.classification import classification_metrics, confusion
from llm_finetuning.evaluation.retrieval import RetrievalSet, retrieval_metrics

pytestmark = pytest.mark.unit


def test_single_label_metrics_by_hand():
    labels = ["a", "b", "c"]
    gold = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    metrics = classification_metrics(gold, predicted, labels)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # a: P 1/2 R 1/2 -> F1 1/2; b: P 2/3 R 1 -> 0.8; c: P 1 R 1/2 -> 2/3
    assert metrics["per_class"]["a"]["f1"] == pytest.approx(0.5)
    assert metrics["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert metrics["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert confusion(gold, predicted, labels) == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_multi_label_metrics_by_hand():
    gold = np.array([[1, 0], [1, 1], [0, 1]])
    predicted = np.array([[1, 0], [1, 0], [0, 1]])
    metrics = classification_metrics(gold, predicted, ["x", "y"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # rows with every label right
    assert metrics["per_class"]["y"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))  # tp 3, fn 1, fp 0


def test_retrieval_metric_names_and_a_perfect_ranking(tmp_path):
    """Each query is the very text of its positive, so it ranks first: every metric is 1."""
    from sentence_transformers import SentenceTransformer

    from tests.encoder_fixtures import tiny_sentence_transformer

    model = SentenceTransformer(str(tiny_sentence_transformer(tmp_path / "st")))
    rows = [("r", {"query": t, "positive": t, "negatives": [t[::-1] + " x"]}) for t in ("alpha beta", "gamma", "delta")]
    data = RetrievalSet.from_rows(rows)
    assert len(data.corpus) == 6 and all(len(v) == 1 for v in data.relevant.values())
    metrics = retrieval_metrics(model, data)
    assert set(metrics) == {"accuracy@1", "map@100", "mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10"}
    assert all(value == pytest.approx(1.0) for value in metrics.values()), metrics


@pytest.mark.parametrize(
    ("row", "fmt", "record"),
    [
        (
            {"anchor": "q", "positive": "p", "negative": "n"},
            "retrieval",
            {"query": "q", "positive": "p", "negatives": ["n"]},
        ),
        (
            {"query": "q", "positive": "p", "negative_2": "m", "negative_1": "n"},
            "retrieval",
            {"query": "q", "positive": "p", "negatives": ["n", "m"]},
        ),
        ({"sentence1": "a", "sentence2": "b", "label": 1}, "scored_pair", {"text1": "a", "text2": "b", "score": 1.0}),
        ({"text": "t", "label": 3}, "labeled_text", {"text": "t", "text_pair": None, "label": "3"}),
        ({"text": "t", "label": 2.5}, "labeled_text", {"text": "t", "text_pair": None, "label": 2.5}),
    ],
)
def test_encoder_formats_read_the_common_layouts(row, fmt, record):
    assert to_record(row, fmt, {}) == record


def test_scored_pair_needs_a_number():
    with pytest.raises(RowError, match="field `score` must be a number"):
        to_record({"text1": "a", "text2": "b", "score": "high"}, "scored_pair", {})
