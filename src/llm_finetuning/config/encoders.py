"""`method:` options of the models that read text rather than write it: embedding models (bi-encoders), rerankers
(cross-encoders) and classifiers, trained with sentence-transformers and transformers' sequence classifiers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from llm_finetuning.config.base import Section

Pooling = Literal["auto", "mean", "cls", "lasttoken", "max", "weightedmean"]

# Which record kind each embedding loss reads (data/formats.py): ranking losses want (query, positive, negatives),
# the similarity losses a pair and its score.
EMBEDDING_LOSS_KIND = {
    "mnrl": "retrieval",
    "cached_mnrl": "retrieval",
    "triplet": "retrieval",
    "contrastive": "scored_pair",
    "cosent": "scored_pair",
}


class EmbeddingMethod(Section):
    """An embedding model (bi-encoder) for retrieval and similarity, trained with sentence-transformers: queries and
    documents are encoded apart and compared by cosine similarity. Data: `retrieval` rows (query, positive and
    optional hard negatives) for the ranking losses, `scored_pair` rows for `contrastive` and `cosent`. `final/`
    loads with `SentenceTransformer(path)`."""

    name: Literal["embedding"] = "embedding"
    """Training method."""
    loss: Literal["mnrl", "cached_mnrl", "triplet", "contrastive", "cosent"] = "mnrl"
    """`mnrl`: multiple-negatives ranking (in-batch negatives plus the row's hard negatives; the usual choice).
    `cached_mnrl`: the same loss with GradCache, so large batches fit in small memory (`mini_batch_size`).
    `triplet`: (query, positive, negative) with a margin; needs a negative per row. `contrastive`: pairs labelled
    1 (similar) or 0, with a margin. `cosent`: pairs with a similarity score (any scale; only the order matters)."""
    matryoshka_dims: list[int] = Field(default_factory=list)
    """Also train truncated embeddings (Matryoshka): e.g. `[256, 128, 64]`; each prefix of the embedding is then
    usable on its own. The full dimension is always included. Empty: off."""
    pooling: Pooling = "auto"
    """How token vectors become one embedding: `mean`, `cls` (the first token; encoders only), `lasttoken` (the
    last real token: decoders), `max`, `weightedmean`. `auto`: `mean` for encoders, `lasttoken` for decoders. A
    model already saved by sentence-transformers keeps its own pooling unless this is set."""
    normalize: bool = True
    """Scale embeddings to unit length (so the dot product is the cosine similarity)."""
    scale: float = Field(20.0, gt=0)
    """`mnrl`/`cached_mnrl`: inverse temperature applied to the similarities."""
    mini_batch_size: int | None = Field(None, gt=0)
    """`cached_mnrl`: examples per forward pass inside a batch (memory), independent of the batch size. Unset: 16."""
    margin: float | None = Field(None, gt=0)
    """`triplet` (Euclidean, default 5) and `contrastive` (cosine distance, default 0.5): the margin."""
    query_prompt: str | None = None
    """Text put before every query, e.g. `"query: "` for E5-style models; saved with the model as its `query`
    prompt, so `model.encode_query` adds it too."""
    document_prompt: str | None = None
    """Text put before every document (positives and negatives), e.g. `"passage: "`; saved as the `document`
    prompt."""
    no_duplicates: bool = True
    """Never put the same text twice in a batch (ranking losses would take a copy of the positive for a negative)."""

    @field_validator("matryoshka_dims")
    @classmethod
    def _positive_dims(cls, value: list[int]) -> list[int]:
        if any(dim <= 0 for dim in value):
            raise ValueError("`matryoshka_dims` must be positive sizes")
        return sorted(set(value), reverse=True)

    @model_validator(mode="after")
    def _margin_applies(self) -> EmbeddingMethod:
        if self.margin is not None and self.loss not in ("triplet", "contrastive"):
            raise ValueError(f"`method.margin` applies to the `triplet` and `contrastive` losses, not `{self.loss}`")
        if self.mini_batch_size is not None and self.loss != "cached_mnrl":
            raise ValueError("`method.mini_batch_size` applies to `loss: cached_mnrl` only")
        return self

    @property
    def record_kind(self) -> str:
        return EMBEDDING_LOSS_KIND[self.loss]


class RerankerMethod(Section):
    """A reranker (cross-encoder), trained with sentence-transformers: the query and a document are read together
    and scored for relevance. Data: `retrieval` rows (query, positive, hard negatives: `llmft data mine-negatives`
    adds them), or `scored_pair` rows (query, document, 0/1 label) for `loss: bce`. `final/` loads with
    `CrossEncoder(path)`."""

    name: Literal["reranker"] = "reranker"
    """Training method."""
    loss: Literal["bce", "lambda", "listnet", "listmle", "mnrl"] = "bce"
    """`bce`: binary (each query-document pair labelled relevant or not). Listwise, over the positive and the
    negatives of a row together: `lambda` (LambdaLoss, NDCG-weighted), `listnet`, `listmle`. `mnrl`: the positive
    against the row's and the batch's other documents."""
    max_negatives: int | None = Field(None, gt=0)
    """Use at most this many hard negatives per row (the first ones). Unset: all of them."""
    pos_weight: float | None = Field(None, gt=0)
    """`bce`: weight of the positive pairs (e.g. the number of negatives per positive, for balance). Unset: 1."""

    @model_validator(mode="after")
    def _bce_only(self) -> RerankerMethod:
        if self.pos_weight is not None and self.loss != "bce":
            raise ValueError("`method.pos_weight` applies to `loss: bce` only")
        return self


class ClassifyMethod(Section):
    """Text classification with a sequence-classification head on an encoder or a decoder (transformers'
    `AutoModelForSequenceClassification`), full or with an adapter. Data: `labeled_text` rows. Evaluation reports
    accuracy, macro F1, a per-class table and a confusion-matrix plot in the run."""

    name: Literal["classify"] = "classify"
    """Training method."""
    labels: list[str] = Field(default_factory=list)
    """The classes, in the order of the model's outputs. A row with a label outside them is an error naming the
    row. Empty: the sorted labels found in the training data."""
    multi_label: bool = False
    """Each row may have several labels (a list); trained with a sigmoid per class instead of a softmax."""
    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"
    """Loss weight per class against imbalance: `balanced` (inverse frequency in the training rows, averaging 1), a
    mapping `{label: weight}` (unlisted labels weigh 1), or `none`."""
    threshold: float | None = Field(None, gt=0, lt=1)
    """`multi_label`: the probability above which a class is predicted. Unset: 0.5."""

    @field_validator("labels")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        duplicated = sorted({label for label in value if value.count(label) > 1})
        if duplicated:
            raise ValueError(f"`method.labels` lists {', '.join(duplicated)} more than once")
        return value

    @model_validator(mode="after")
    def _weights_name_labels(self) -> ClassifyMethod:
        if isinstance(self.class_weights, dict) and self.labels:
            unknown = sorted(set(self.class_weights) - set(self.labels))
            if unknown:
                raise ValueError(
                    f"`method.class_weights` names {', '.join(unknown)}, not in `method.labels` "
                    f"({', '.join(self.labels)})"
                )
        if self.threshold is not None and not self.multi_label:
            raise ValueError("`method.threshold` applies with `multi_label: true` only")
        return self
