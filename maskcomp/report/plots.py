"""Matplotlib helpers shared by the reports (headless backend, atomic PNG writes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core.fileio import atomic_path  # noqa: E402


def save(fig: "plt.Figure", path: Path) -> Path:
    """PNG for plots (sharp lines and text); JPEG (quality 85) where `path` ends in .jpg: grids of photos, a sixth of
    their PNG size (label_noise: 3.2 MB as PNG, 0.56 MB as JPEG)."""
    jpeg = path.suffix == ".jpg"
    options = {"format": "jpeg", "pil_kwargs": {"quality": 85}} if jpeg else {"format": "png"}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", **options)
    plt.close(fig)
    return path


def bar(values, names, title: str, path: Path, xlabel: str, ylabel: str) -> Path:
    """Bars with their values on top; names longer than a few characters are written vertically."""
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(
        range(len(values)), names, rotation=90 if max(len(str(n)) for n in names) > 6 and len(names) > 4 else 0
    )
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:g}", ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return save(fig, path)


def curves(metrics: dict, learning_rates: dict, path: Path) -> Path:
    """Loss, validation macro F1 and learning rate per fold, one colour per fold in every panel; the learning rate
    per step where it was logged (warm-up visible), else per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for fold, m in metrics.items():
        colour = f"C{fold % 10}"
        axes[0].plot(m["epoch"], m["train_loss"], color=colour, label=f"fold {fold} train")
        axes[0].plot(m["epoch"], m["val_loss"], "--", color=colour, label=f"fold {fold} validation")
        axes[1].plot(m["epoch"], m["f1"], "o-", color=colour, label=f"fold {fold}")
        lr = learning_rates.get(fold)
        if lr is not None:
            axes[2].plot(lr["epoch"], lr["lr"], color=colour, label=f"fold {fold}")
        else:
            axes[2].plot(m["epoch"], m["lr"], "o-", color=colour, label=f"fold {fold}")
    for ax, title, ylabel in zip(
        axes, ("loss", "validation macro F1", "learning rate per step"), ("loss", "macro F1", "lr")
    ):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    return save(fig, path)


def reliability(bins, ece: float, path: Path) -> Path:
    """Accuracy against confidence per bin (columns conf, acc, n), each point labelled with its image count."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--")
    ax.plot(bins["conf"], bins["acc"], "o-")
    for x, acc, n in zip(bins["conf"], bins["acc"], bins["n"]):
        ax.annotate(str(int(n)), (x, acc), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_title(f"reliability (ECE {ece:.3f}; numbers: images per bin)", fontsize=10)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    return save(fig, path)


def confusion(matrix: np.ndarray, names, title: str, path: Path) -> Path:
    """Counts in each cell, colour by the share of the true class's row (rare classes stay visible), diagonal boxed."""
    n = len(names)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    font = 9 if n > 6 else 11
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted", fontsize=11)
    ax.set_ylabel("true", fontsize=11)
    for i in range(n):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:orange", linewidth=1.5))
        for j in range(n):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=font - 1,
                    color="white" if rows[i, j] > 0.5 else "black",
                )
    ax.set_title(f"{title}\n(colour: share of the true class's images)", fontsize=11)
    return save(fig, path)


def image_grid(
    images: list[np.ndarray], captions: list[str], title: str, path: Path, cols: int = 6, fontsize: int = 8
) -> Path:
    """RGB uint8 images in a grid with a caption above each."""
    rows = max(1, (len(images) + cols - 1) // cols)
    caption_lines = max((c.count("\n") + 1 for c in captions), default=1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2 * cols, (2.3 + 0.035 * fontsize * caption_lines) * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img)
        ax.set_title(cap, fontsize=fontsize, y=1.0)  # placed, not fitted: fitting reads every axis extent (seconds)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)
