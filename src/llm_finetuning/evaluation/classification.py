"""Classification metrics (scikit-learn's, so they match what users compute themselves) and the confusion-matrix plot.

Single-label: accuracy, macro F1 and a per-class table (precision, recall, F1, support) over the declared labels.
Multi-label: subset accuracy (every label of a row right), micro and macro F1 and the same per-class table, each
class judged on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(gold: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """`gold`/`predicted`: class indices (single-label), or 0/1 matrices of rows x classes (multi-label)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    indices = list(range(len(labels)))
    multi = gold.ndim == 2
    kwargs = {} if multi else {"labels": indices}
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, zero_division=0, **kwargs)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0, **kwargs)),
    }
    if multi:
        out["micro_f1"] = float(f1_score(gold, predicted, average="micro", zero_division=0))
    out["per_class"] = {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }
    return out


def confusion(gold: np.ndarray, predicted: np.ndarray, labels: list[str]) -> list[list[int]]:
    """Rows: the gold class, columns: the predicted one (single-label); per class [[tn, fp], [fn, tp]] otherwise."""
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

    if gold.ndim == 2:
        return multilabel_confusion_matrix(gold, predicted).tolist()
    return confusion_matrix(gold, predicted, labels=list(range(len(labels)))).tolist()


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "confusion matrix") -> Path:
    """A PNG of a single-label confusion matrix, counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array(matrix)
    size = max(3.0, 0.6 * len(labels) + 1.5)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(values, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title(title)
    threshold = values.max() / 2 if values.size else 0
    for row in range(values.shape[0]):
        for column in range(values.shape[1]):
            colour = "white" if values[row, column] > threshold else "black"
            axes.text(column, row, str(values[row, column]), ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def per_class_table(metrics: dict[str, Any]) -> str:
    """The per-class table as Markdown (what `llmft eval` prints and the run's report shows)."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for label, row in metrics["per_class"].items():
        lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    return "\n".join(lines)
