"""Matplotlib figures: training curves and the confusion matrix (Agg backend, files only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_history", "plot_confusion"]


def _pyplot():
    from edgecnn._optional import pyplot

    return pyplot()


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)


def plot_history(history: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Loss and the run's score per epoch (train and validation) side by side: accuracy, or mIoU for
    a segmenter; a detector, which scores mAP once at the end, gets its loss alone."""
    plt = _pyplot()
    epochs = history.get("epoch", [])
    keys = ["loss"] + [k for k in ("accuracy", "miou") if history.get(k) or history.get(f"val_{k}")][:1]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for prefix, style in (("", "-"), ("val_", "--")):
            if history.get(prefix + key):
                ax.plot(epochs, history[prefix + key], style, marker="o", ms=3, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Row-normalized confusion matrix with counts in the cells."""
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 2), max(3.5, 0.6 * n + 1.5)))
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] / rows[i, 0] > 0.5 else "black")
    ax.set_title(title)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)
