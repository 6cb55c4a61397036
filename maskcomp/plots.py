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
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(title)
    return save(fig, path)


def image_grid(images: list[np.ndarray], captions: list[str], title: str, path: Path, cols: int = 6) -> Path:
    """RGB uint8 images in a grid with a caption under each."""
    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img)
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title)
    return save(fig, path)
