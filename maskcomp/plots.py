"""Matplotlib helpers shared by the reports (headless backend, atomic PNG writes)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fileio import atomic_path  # noqa: E402


def save(fig: "plt.Figure", path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def bar(values, names, title: str, path: Path, xlabel: str = "", rotate: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)), names, rotation=90 if rotate else 0)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:g}", ha="center", va="bottom", fontsize=7)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
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
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=font - 1,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(f"{title}\n(colour: share of the true class's images)", fontsize=11)
    return save(fig, path)


def image_grid(images: list[np.ndarray], captions: list[str], title: str, path: Path, cols: int = 6) -> Path:
    """RGB uint8 images in a grid with a caption under each."""
    rows = max(1, (len(images) + cols - 1) // cols)
    caption_lines = max((c.count("\n") + 1 for c in captions), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, (2.3 + 0.2 * caption_lines) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img)
        ax.set_title(cap, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)
