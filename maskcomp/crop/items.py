"""The images the crop stage works on: every train and eval image with its key, person and content digest."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.context import Context
from ..data.tables import load_eval, load_train


@dataclass
class Item:
    """One image to crop; `digest` (SHA-256 of its bytes) keys its detection and its crop file."""

    key: str
    split: str
    image_path: str
    person_id: str
    digest: str


def list_items(ctx: Context) -> list[Item]:
    paths, cache = ctx.paths, ctx.digests
    train = load_train(ctx)
    evals = load_eval(ctx)
    listed = [(p, "train", pid) for p, pid in zip(train["image_path"], train["person_id"])]
    listed += [(p, "eval", "") for p in evals["image_path"]]
    digests = cache.digests([p for p, _, _ in listed], "images")
    return [Item(paths.image_key(p), split, p, pid, d) for (p, split, pid), d in zip(listed, digests)]
