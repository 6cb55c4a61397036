"""Augmentation: albumentations pipelines from config, and batch-level mixing (timm Mixup, half CutMix)."""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from ..core.settings import AugmentSettings

GREY = 128  # the fill of a greyed background, before normalisation


def train_transform(aug: AugmentSettings, size: tuple[int, int], mean, std) -> A.Compose:
    h, w = size
    steps: list = [A.Resize(h, w)]
    if aug.hflip:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    if aug.color_jitter:
        j = aug.color_jitter
        steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4), p=0.8))
    if aug.shift_scale_rotate:
        steps.append(
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.06, 0.06),
                rotate=(-10, 10),
                border_mode=0,
                p=aug.shift_scale_rotate,
            )
        )
    if aug.coarse_dropout:
        steps.append(
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.08, 0.2),
                hole_width_range=(0.08, 0.2),
                p=aug.coarse_dropout,
            )
        )
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)


def eval_transform(size: tuple[int, int], mean, std) -> A.Compose:
    return A.Compose([A.Resize(*size), A.Normalize(mean=mean, std=std), ToTensorV2()])


def half_cutmix(
    images: torch.Tensor,
    label: torch.Tensor,
    age: torch.Tensor,
    prob: float,
    rare_only: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Label-preserving CutMix: the left or right half of an image becomes the same half of another image of
    the same 18-class label (faces are centred, so the halves stay plausible); lambda is 0.5 by construction.
    With rare_only, only images whose age group is >=60 are mixed. Returns a new batch; labels are unchanged.

    Vectorised, with every random draw from the CPU `generator`: no per-sample host synchronisation."""
    n, width = len(images), images.shape[-1]
    label, age = label.cpu(), age.cpu()
    pick = torch.rand(n, generator=generator) < prob
    if rare_only:
        pick &= age == 2
    # a random mate of the same label: the highest random score among the eligible images
    eligible = (label[:, None] == label[None, :]) & ~torch.eye(n, dtype=torch.bool)
    scores = torch.rand(n, n, generator=generator).masked_fill(~eligible, -1.0)
    mate = scores.argmax(1)
    pick &= eligible.any(1)
    left = torch.rand(n, generator=generator) < 0.5
    columns = torch.arange(width)
    take = pick[:, None] & torch.where(left[:, None], columns[None, :] < width // 2, columns[None, :] >= width // 2)
    take = take.to(images.device)[:, None, None, :]
    return torch.where(take, images[mate.to(images.device)], images)


def jittered(box: np.ndarray, jitter: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The box with each side moved by up to `jitter` of the box's width or height, kept inside the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    moved = np.array([x1, y1, x2, y2]) + rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
    height, width = shape
    return np.clip(np.round(moved), 0, [width, height, width, height]).astype(int)


def suppress_background(image: np.ndarray, box, fill: str, rng: np.random.Generator) -> np.ndarray:
    """A copy of the HxWx3 uint8 `image` whose pixels outside `box` (x1, y1, x2, y2) are grey, blurred or noise; the
    face inside is untouched."""
    if fill == "grey":
        out = np.full_like(image, GREY)
    elif fill == "blur":
        out = cv2.GaussianBlur(image, (0, 0), sigmaX=max(image.shape[:2]) / 12)
    else:
        out = rng.integers(0, 256, image.shape, dtype=np.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    out[y1:y2, x1:x2] = image[y1:y2, x1:x2]
    return out


@dataclass(frozen=True)
class BackgroundSuppression:
    """augment.background: with probability p, the background outside the jittered face box replaced; the draws
    come from the sample's own seed, so a resumed run sees the same images."""

    p: float
    fill: str
    jitter: float

    @classmethod
    def of(cls, aug: AugmentSettings) -> BackgroundSuppression | None:
        return cls(aug.background, aug.background_fill, aug.background_jitter) if aug.background > 0 else None

    def __call__(self, image: np.ndarray, face: np.ndarray, seed: int | None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if rng.random() >= self.p:
            return image
        return suppress_background(image, jittered(face, self.jitter, image.shape[:2], rng), self.fill, rng)
