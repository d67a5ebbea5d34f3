"""`method: multi_head`: one shared model with several task heads, each with its own data, loss and loss weight."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llm_finetuning.config.base import Section


class HeadConfig(Section):
    """One task head on the shared model."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The head's name: data sources name it in `data.train[].head`, metrics are reported under it, and it selects
    the head when the model is used (`MultiHeadModel.head(name)`)."""
    type: Literal["classification", "regression", "lm"]
    """`classification`: classes from `labeled_text` rows (cross-entropy, or a sigmoid per class with
    `multi_label`). `regression`: a number from `labeled_text` rows (mean squared error). `lm`: language modelling on
    `text` rows (next-token loss on every token; the model must be a decoder, and this head is its own LM head)."""
    labels: list[str] = Field(default_factory=list)
    """`classification`: the classes, in output order (required: a label outside them is an error naming the row)."""
    multi_label: bool = False
    """`classification`: rows may carry several labels (a list)."""
    weight: float = Field(1.0, gt=0)
    """This head's loss is multiplied by it before the heads' losses are summed."""

    @model_validator(mode="after")
    def _labels_for_classes(self) -> HeadConfig:
        if self.type == "classification" and len(self.labels) < 2:
            raise ValueError(f"head `{self.name}`: a classification head needs `labels` (at least 2)")
        if self.type != "classification" and (self.labels or self.multi_label):
            raise ValueError(f"head `{self.name}`: `labels` and `multi_label` apply to classification heads only")
        return self


class MultiHeadMethod(Section):
    """Several tasks on one shared model: a backbone (encoder or decoder) and one head per task. Each data source
    names its head (`data.train: [{path: ..., format: labeled_text, head: topic}, ...]`); batches hold rows of one
    head each, drawn in proportion to the heads' data, and each head's loss is weighted by its `weight`. Each head is
    evaluated on its own metrics (accuracy and macro F1, RMSE and Pearson r, perplexity); `final/` holds the backbone,
    the heads and their description, and reloads with every head usable alone."""

    name: Literal["multi_head"] = "multi_head"
    """Training method."""
    heads: list[HeadConfig]
    """The task heads (at least one)."""
    pooling: Literal["auto", "mean", "cls", "lasttoken"] = "auto"
    """How the classification and regression heads read the text: `auto` is `cls` (the first token) for encoders
    and `lasttoken` for decoders; `mean` averages the real tokens."""

    @field_validator("heads")
    @classmethod
    def _distinct(cls, value: list[HeadConfig]) -> list[HeadConfig]:
        if not value:
            raise ValueError("`method.heads` needs at least one head")
        names = [head.name for head in value]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"`method.heads` names {', '.join(duplicated)} more than once")
        if sum(head.type == "lm" for head in value) > 1:
            raise ValueError("`method.heads`: at most one `lm` head (the model's own LM head)")
        return value


def check_heads(config: Any) -> None:
    """Every multi-head source names a declared head, and every head has training data."""
    declared = [head.name for head in config.method.heads]
    for split in ("train", "eval"):
        for source in getattr(config.data, split):
            if source.head is None:
                raise ValueError(
                    f"data.{split} source {source.label}: name its head (`head: {declared[0]}`); with `method.name: "
                    f"multi_head` every source trains or evaluates one of {', '.join(declared)}"
                )
            if source.head not in declared:
                close = difflib.get_close_matches(source.head, declared, n=1)
                hint = f" Did you mean `{close[0]}`?" if close else ""
                raise ValueError(
                    f"data.{split} source {source.label}: `head: {source.head}` is not in `method.heads` "
                    f"({', '.join(declared)}).{hint}"
                )
    trained = {source.head for source in config.data.train}
    missing = [name for name in declared if name not in trained]
    if missing:
        raise ValueError(f"`method.heads` {', '.join(missing)} have no training source (`data.train[].head`)")
