"""The plots of a run, as PNG files (matplotlib, non-interactive backend)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]


def training_curves(rows: list[dict], path: Path) -> Path:
    """Train vs validation loss and accuracy per epoch."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", label="train")
        if any(r.get(f"val_{key}") is not None for r in rows):
            ax.plot(epochs, [r.get(f"val_{key}") for r in rows], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts and the share of each true class (rows normalised), side by side."""
    plt = _pyplot()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    side = max(4.0, 0.45 * k + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    for ax, values, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "share of the true class", ".2f")):
        im = ax.imshow(values, cmap="Blues")
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        if k <= 20:
            hi = values.max() / 2 if values.size else 0
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        format(values[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if values[i, j] > hi else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def image_grid(
    images: np.ndarray,
    true: list[str],
    pred: list[str],
    conf: list[float],
    path: Path,
    title: str,
    columns: int = 8,
    names: tuple[str, str] = ("true", "pred"),
) -> Path:
    """Images with their true and predicted labels and confidence; wrong predictions in red. names: what
    the two labels are called (the label check's are the given and the suggested one)."""
    plt = _pyplot()
    n = max(1, len(images))
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.95), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, t, p, c in zip(axes.flat, images, true, pred, conf):
        ax.imshow(im[0] if im.shape[0] == 1 else im[:3].transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        wrong = t != p
        ax.set_title(f"{names[0]} {t}\n{names[1]} {p} {c:.0%}", fontsize=7, color="crimson" if wrong else "black")
        if wrong:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("crimson")
                spine.set_linewidth(2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def f1_bars(per_class: list[dict], path: Path) -> Path:
    plt = _pyplot()
    names = [r["class"] for r in per_class]
    f1 = [r["f1"] for r in per_class]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 3.6))
    bars = ax.bar(range(len(names)), f1, color=["crimson" if v == min(f1) else "steelblue" for v in f1])
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("F1 per class (weakest in red)")
    for b, v in zip(bars, f1):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    return _save(fig, path)


def lr_range(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float, recipe_lr: float, path: Path) -> Path:
    """Loss against learning rate (log axis) from a range test, the suggestion and the recipe's lr marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(lrs, losses, color="lightgray", lw=1, label="loss per step")
    ax.plot(lrs, smoothed, color="steelblue", lw=2, label="smoothed loss")
    at = min(range(len(lrs)), key=lambda i: abs(np.log(lrs[i] / suggestion)))
    ax.plot([suggestion], [smoothed[at]], "o", color="crimson", ms=8, label=f"suggested lr {suggestion:.2g} (steepest fall)")
    ax.axvline(recipe_lr, color="gray", ls="--", lw=1, label=f"recipe's lr {recipe_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_ylim(top=1.1 * max(smoothed))  # a diverging step's raw loss would flatten the curve that matters
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
