"""Plots of a run's metrics, written as PNG files into `plots/`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, imported when a plot is drawn; None (with a warning) where
    matplotlib is not installed, so a lean install (a GPU box with only the training stack) still trains."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed: no plots are drawn (`pip install matplotlib`)")
        return None
    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    # metrics.jsonl is append-only: after a resume, steps between the checkpoint and the interruption are logged
    # again. The later value of a step wins, so the curve is the trajectory the final model followed.
    points = {r["step"]: float(r[key]) for r in records if isinstance(r.get(key), int | float)}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_metrics(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write loss.png (train and eval loss vs step) and lr.png; return the files written."""
    plt = pyplot()
    if plt is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = _series(records, key)
        if steps:
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    if axis.has_data():
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_dir / "loss.png", dpi=100)
    plt.close(figure)
    written.append(out_dir / "loss.png")
    steps, values = _series(records, "learning_rate")
    if steps:
        figure, axis = plt.subplots(figsize=(7, 3))
        axis.plot(steps, values)
        axis.set_xlabel("step")
        axis.set_ylabel("learning rate")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / "lr.png", dpi=100)
        plt.close(figure)
        written.append(out_dir / "lr.png")
    return written
