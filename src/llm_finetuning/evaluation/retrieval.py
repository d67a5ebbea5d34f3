"""Retrieval and reranking metrics through sentence-transformers' own evaluators.

A `RetrievalSet` is queries, a corpus and which documents are relevant to each query, built from `retrieval` rows
(query, positive, negatives): the corpus is every positive and negative, each text once. Bi-encoders are scored
on ranking the whole corpus (NDCG@10, MRR@10, MAP@100, recall@k); rerankers on ordering each query's own positive
and negatives (NDCG@10, MRR@10, MAP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RECALL_AT = (1, 5, 10)


@dataclass
class RetrievalSet:
    queries: dict[str, str] = field(default_factory=dict)
    corpus: dict[str, str] = field(default_factory=dict)
    relevant: dict[str, set[str]] = field(default_factory=dict)
    negatives: dict[str, list[str]] = field(default_factory=dict)
    """Query id -> the ids of its own hard negatives (what a reranker orders with the positives)."""

    @classmethod
    def from_rows(cls, rows: list[tuple[str, dict[str, Any]]]) -> RetrievalSet:
        out = cls()
        ids: dict[str, str] = {}

        def document(text: str) -> str:
            if text not in ids:
                ids[text] = f"d{len(ids)}"
                out.corpus[ids[text]] = text
            return ids[text]

        for index, (_, record) in enumerate(rows):
            query = f"q{index}"
            out.queries[query] = record["query"]
            out.relevant[query] = {document(record["positive"])}
            out.negatives[query] = [document(text) for text in record["negatives"]]
        return out

    def add_corpus(self, texts: list[str]) -> None:
        """More documents to retrieve from (distractors no query is relevant to)."""
        known = set(self.corpus.values())
        for text in texts:
            if text not in known:
                known.add(text)
                self.corpus[f"d{len(self.corpus)}"] = text

    def rerank_samples(self) -> list[dict[str, Any]]:
        return [
            {
                "query": self.queries[q],
                "positive": [self.corpus[d] for d in self.relevant[q]],
                "negative": [self.corpus[d] for d in self.negatives[q]],
            }
            for q in self.queries
        ]


def retrieval_metrics(model: Any, data: RetrievalSet, batch_size: int = 32) -> dict[str, float]:
    """A bi-encoder ranking the whole corpus for each query, by cosine similarity."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    evaluator = InformationRetrievalEvaluator(
        queries=data.queries,
        corpus=data.corpus,
        relevant_docs=data.relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=list(RECALL_AT),
        map_at_k=[100],
        batch_size=batch_size,
        write_csv=False,
        query_prompt=model.prompts.get("query"),
        corpus_prompt=model.prompts.get("document"),
        score_functions={"cosine": _cosine},
    )
    raw = evaluator(model)
    wanted = {"ndcg@10", "mrr@10", "map@100", "accuracy@1", *(f"recall@{k}" for k in RECALL_AT)}
    out = {}
    for key, value in raw.items():
        name = key.split("cosine_", 1)[-1]
        if name in wanted:
            out[name] = float(value)
    return dict(sorted(out.items()))


def rerank_metrics(model: Any, data: RetrievalSet, batch_size: int = 32) -> dict[str, float]:
    """A cross-encoder ordering each query's positive among its own hard negatives."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    samples = [s for s in data.rerank_samples() if s["negative"]]
    if not samples:
        raise ValueError("reranking needs rows with hard negatives (`negatives`); none of the rows has any")
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, batch_size=batch_size, write_csv=False)
    return {key: float(value) for key, value in sorted(evaluator(model).items())}


def _cosine(a: Any, b: Any) -> Any:
    from sentence_transformers.util import cos_sim

    return cos_sim(a, b)
