"""Look-alike persons (infer.neighbours): the 2nd cohort's winner raised age accuracy with the nearest training persons
in embedding space. Each fold model's penultimate features (its backbone's pooled output) of the fold's training
images are pooled per person; every held-out (OOF) and eval image gets the age-group and gender shares among its k
nearest persons (cosine), for each k in K_CHOICES. The shares go to fold<K>/neighbours.npz; the ensemble blends them
into the heads (ensemble/neighbours.py), choosing k and the weight on OOF, nested."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.fileio import atomic_path
from ..runs import FoldFiles

K_CHOICES = (5, 10, 20, 40)  # persons; a fold's training split has hundreds
SHARES = {"age": 3, "gender": 2}  # the heads whose labels a look-alike person carries (mask is per image)


def pooled_features(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the backbone's pooled output, the same L2-normalised) of a batch: what look-alikes are found by (here and on
    the analysis page's embedding view)."""
    pooled = model.backbone(images)
    return pooled, torch.nn.functional.normalize(pooled.float(), dim=1)


def penultimate(model: torch.nn.Module, loader, device: torch.device) -> np.ndarray:
    """L2-normalised pooled backbone features of every image the loader yields, in order."""
    out = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            out.append(pooled_features(model, images.to(device))[1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def pooled_persons(feats: np.ndarray, persons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(person ids, one L2-normalised mean feature per person)."""
    ids, index = np.unique(persons, return_inverse=True)
    sums = np.zeros((len(ids), feats.shape[1]), np.float64)
    np.add.at(sums, index, feats)
    return ids, sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def label_shares(
    query: np.ndarray, person_feats: np.ndarray, person_labels: dict[str, np.ndarray], ks=K_CHOICES
) -> dict[str, np.ndarray]:
    """Per head, (len(ks), queries, classes): each query's share of each class among its k most similar persons."""
    order = np.argsort(-(query @ person_feats.T), axis=1)
    out = {}
    for head, classes in SHARES.items():
        onehot = np.eye(classes)[person_labels[head]]
        out[head] = np.stack([onehot[order[:, : min(k, len(person_feats))]].mean(1) for k in ks])
    return out


def write_neighbours(
    files: FoldFiles, val_keys: list[str], train_feats: np.ndarray, train: pd.DataFrame, queries: dict[str, np.ndarray]
) -> None:
    """fold<K>/neighbours.npz: for the OOF (by image key) and eval images (test_ids order), each head's shares."""
    ids, person_feats = pooled_persons(train_feats, train["person_id"].to_numpy())
    first = train.drop_duplicates("person_id").set_index("person_id").loc[ids]
    person_labels = {"age": first["age_group"].to_numpy(), "gender": first["gender_label"].to_numpy()}
    arrays: dict[str, np.ndarray] = {"k": np.array(K_CHOICES), "oof_keys": np.array(val_keys)}
    for side, feats in queries.items():
        for head, shares in label_shares(feats, person_feats, person_labels).items():
            arrays[f"{side}_{head}"] = shares.astype(np.float32)
    with atomic_path(files.neighbours) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
