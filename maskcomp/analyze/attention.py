"""Where the model looks, on the analysis page: Grad-CAM (pytorch-grad-cam) of each head of the run's fold models,
each OOF image explained by the fold model that held it out.

- For each head's weakest classes: its most confident errors and a few confident correct images, map over the crop,
  the face box drawn.
- The face share per head and class: the map's mass inside the face box (crop records, mapped into the model's
  input) over its total, on a fixed number of images per class; a head below attention.warn_below is flagged.
- The causal check: each head's macro F1 on a fixed OOF sample as it is and with everything outside the face box
  greyed out (set to the normalisation mean), so a team knows whether background removal would matter.

Convnets use their last 4-D feature map; ViT / Swin (timm) the last block's norm1 with a reshape to the patch grid.
Everything is keyed on the run's models, OOF and crop records and the attention settings (attention/manifest.json).
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..core import labels
from ..core.config import Settings
from ..core.fileio import write_json
from ..core.manifests import Manifest, digest_of, file_digest, is_current, read_manifest, write_manifest
from ..core.metrics import f1_per_class, macro_f1
from ..core.settings import AttentionSettings
from ..crop.boxes import FACE_COLUMNS, face_box_in_input
from ..crop.stage import crop_dir
from ..predict.infer import load_fold_model, run_config
from ..report import htmlpage, plots
from ..runs import RunRef
from ..train.augment import eval_transform
from ..train.models import normalisation, probs18
from .embedding import embedding_view

log = logging.getLogger(__name__)

DETECTED = (
    "mtcnn",
    "mtcnn_relaxed",
    "person",
    "person_outlier",
    "median",
)  # sources with a face box of their own (not centre/none)


class HeadScores(torch.nn.Module):
    """A fold model seen as one head's class scores (log-probabilities), the shape Grad-CAM explains."""

    def __init__(self, model: torch.nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.head == "age" and "age_ord" in out:  # an ordinal head's "age" is already log-probabilities
            return out["age"]
        if self.head in out:
            return torch.log_softmax(out[self.head].float(), 1)
        cube = torch.log_softmax(out["label"].float(), 1).reshape(-1, 3, 2, 3)  # a single 18-way head
        dims = {"mask": (2, 3), "gender": (1, 3), "age": (1, 2)}[self.head]
        return torch.logsumexp(cube, dim=dims)


def target_layer(model: torch.nn.Module):
    """(layer, reshape) for Grad-CAM: a transformer's last norm1 (tokens -> grid), else the last module whose output is
    a spatial feature map (4-D, more than one position: a head's conv after pooling is 1x1)."""
    backbone = model.backbone
    if hasattr(backbone, "patch_embed"):
        norms = [m for name, m in backbone.named_modules() if name.endswith("norm1")]
        return norms[-1], _token_grid(backbone)
    maps: list[torch.nn.Module] = []

    def keep(module, _inputs, out) -> None:
        if torch.is_tensor(out) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:  # not a pooled 1x1 map
            maps.append(module)

    hooks = [m.register_forward_hook(keep) for m in backbone.modules() if not list(m.children())]
    size = getattr(model, "input_size", (3, 64, 48))
    with torch.no_grad():
        model(torch.zeros(1, *size))
    for h in hooks:
        h.remove()
    return maps[-1], None


def _token_grid(backbone: torch.nn.Module):
    """Tokens (B, N, C) without the class/register tokens -> (B, C, h, w); Swin's (B, h, w, C) -> (B, C, h, w)."""
    prefix = getattr(backbone, "num_prefix_tokens", 0)
    grid = getattr(backbone.patch_embed, "grid_size", None)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 4:
            return t.permute(0, 3, 1, 2)
        t = t[:, prefix:]
        h, w = grid if grid is not None else (int(t.shape[1] ** 0.5),) * 2
        return t.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def cams(model: torch.nn.Module, head: str, batch: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(N, H, W) Grad-CAM maps in [0, 1] for each image's class of `head`."""
    layer, reshape = target_layer(model)
    with GradCAM(HeadScores(model, head), [layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def face_share(cam: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The map's mass inside the box over its total (nan for an empty map)."""
    total = float(cam.sum())
    x1, y1, x2, y2 = box
    return float(cam[y1:y2, x1:x2].sum()) / total if total > 0 else float("nan")


@dataclass(frozen=True)
class Inputs:
    """How crops become model inputs for this run (size, normalisation)."""

    size: tuple[int, int]
    mean: tuple
    std: tuple

    @classmethod
    def of(cls, cfg: Settings) -> Inputs:
        mean, std = normalisation(cfg.model.backbone)
        return cls(tuple(cfg.train.img_size), mean, std)

    def batch(self, crop_paths: list[str]) -> torch.Tensor:
        transform = eval_transform(self.size, self.mean, self.std)
        images = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in crop_paths]
        return torch.stack([transform(image=img)["image"] for img in images])

    def rgb(self, crop_path: str) -> np.ndarray:
        img = cv2.cvtColor(cv2.imread(crop_path), cv2.COLOR_BGR2RGB)
        return cv2.resize(img, (self.size[1], self.size[0])).astype(np.float32) / 255


def greyed(batch: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Everything outside each face box set to the normalisation mean (0 after normalising)."""
    out = torch.zeros_like(batch)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        out[i, :, y1:y2, x1:x2] = batch[i, :, y1:y2, x1:x2]
    return out


def head_f1(y18: np.ndarray, probs18: np.ndarray) -> dict[str, float]:
    true, pred = labels.head_labels(y18), {h: p.argmax(1) for h, p in labels.head_probs_from_18(probs18).items()}
    return {h: macro_f1(true[h], pred[h]) for h in labels.HEADS}


@dataclass
class Sources:
    """What the attention report reads: the run's config and fold models, and the OOF rows with their crops."""

    cfg: Settings
    models: dict[int, torch.nn.Module]
    rows: pd.DataFrame  # OOF rows with crop_path, crop box, face box, source
    inputs: Inputs

    def boxes(self, rows: pd.DataFrame) -> list[tuple[int, int, int, int]]:
        return [face_box_in_input(r, self.inputs.size) for _, r in rows.iterrows()]

    def per_fold(self, rows: pd.DataFrame):
        """(fold model, its rows, their input batch) for each fold among `rows`."""
        for fold, part in rows.groupby("fold"):
            yield self.models[int(fold)], part, self.inputs.batch(part["crop_path"].tolist())


def head_frame(rows: pd.DataFrame, head: str) -> pd.DataFrame:
    """The rows with one head's truth, prediction and confidence."""
    probs = labels.head_probs_from_18(rows[labels.PROB_COLUMNS].to_numpy())[head]
    return rows.assign(
        truth=labels.head_labels(rows["label"].to_numpy())[head], pred=probs.argmax(1), conf=probs.max(1)
    )


def weakest_classes(frame: pd.DataFrame, head: str, count: int) -> list[int]:
    n = labels.HEADS[head]
    f1 = f1_per_class(frame["truth"].to_numpy(), frame["pred"].to_numpy(), n)
    present = [c for c in range(n) if (frame["truth"] == c).any()]
    return sorted(present, key=lambda c: f1[c])[:count]


def examples(frame: pd.DataFrame, classes: list[int], errors: int, correct: int) -> pd.DataFrame:
    """Each class's most confident errors, then its most confident correct images, one image per person in each (a
    person's 7 images share gender and age: one person would otherwise fill a row)."""
    picked = []
    for c in classes:
        mine = frame[frame["truth"] == c].sort_values("conf", ascending=False, kind="stable")
        wrong, right = mine[mine["pred"] != c], mine[mine["pred"] == c]
        picked += [wrong.drop_duplicates("person_id").head(errors), right.drop_duplicates("person_id").head(correct)]
    return pd.concat(picked) if picked else frame.iloc[:0]


def measured_sample(frame: pd.DataFrame, column: str, per_class: int) -> pd.DataFrame:
    """Up to `per_class` images of each value of `column` with a face box of their own, a fixed draw."""
    detected = frame[frame["source"].isin(DETECTED)]
    return detected.sample(frac=1.0, random_state=0).groupby(column).head(per_class).sort_values(["fold", column])


def explain(src: Sources, rows: pd.DataFrame, head: str) -> pd.DataFrame:
    """`rows` with their Grad-CAM map (of the predicted class) and its face share."""
    out = []
    for model, part, batch in src.per_fold(rows):
        maps = cams(model, head, batch, part["pred"].tolist())
        boxes = src.boxes(part)
        shares = [face_share(m, b) for m, b in zip(maps, boxes)]
        area = [face_share(np.ones(src.inputs.size), b) for b in boxes]  # what a map spread evenly would give
        out.append(part.assign(cam=list(maps), face_share=shares, face_area=area))
    return pd.concat(out) if out else rows.assign(cam=None, face_share=np.nan, face_area=np.nan)


def causal_check(src: Sources, per_class: int) -> dict[str, dict]:
    """Each head's macro F1 on a fixed OOF sample as it is and with the background greyed out."""
    sample = measured_sample(src.rows, "label", per_class)
    if sample.empty:
        return {}
    normal, grey = [], []
    with torch.no_grad():
        for model, part, batch in src.per_fold(sample):
            normal.append(probs18(model(batch)).numpy())
            grey.append(probs18(model(greyed(batch, src.boxes(part)))).numpy())
    y = np.concatenate([p["label"].to_numpy() for _, p in sample.groupby("fold")])
    plain, masked = head_f1(y, np.concatenate(normal)), head_f1(y, np.concatenate(grey))
    return {h: {"f1": plain[h], "f1_background_greyed": masked[h], "images": int(len(y))} for h in labels.HEADS}


def overlay(src: Sources, row: pd.Series) -> np.ndarray:
    """The crop as the model saw it and, beside it, the map over it with the face box in green."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    crop = src.inputs.rgb(row["crop_path"])
    image = show_cam_on_image(crop, row["cam"], use_rgb=True, image_weight=0.55)
    x1, y1, x2, y2 = face_box_in_input(row, src.inputs.size)
    boxed = cv2.rectangle(np.ascontiguousarray(image), (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (0, 200, 0), 1)
    gap = np.full((crop.shape[0], 2, 3), 255, np.uint8)
    pair = np.hstack([(crop * 255).astype(np.uint8), gap, boxed])
    scale = max(1, OVERLAY_MIN_HEIGHT // pair.shape[0])  # a 96x72 input would print as a 75-pixel stamp
    return cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else pair


OVERLAY_MIN_HEIGHT = 192  # pixels: the maps are drawn at least this tall, whatever the model's input size


def caption(row: pd.Series, head: str) -> str:
    names = labels.HEAD_NAMES[head]
    verdict = "correct" if row["truth"] == row["pred"] else "wrong"
    share = "" if np.isnan(row["face_share"]) else f", face {row['face_share']:.2f}"
    who = f"{row['person_id']}, age {row['age']}"
    return f"{who}\ntrue {names[row['truth']]}\npred {names[row['pred']]} p={row['conf']:.2f}\n{verdict}{share}"


def head_report(src: Sources, head: str, settings: AttentionSettings, out: Path) -> dict:
    """One head: its weakest classes' examples (a picture) and the face share per class (numbers)."""
    frame = head_frame(src.rows, head)
    weakest = weakest_classes(frame, head, settings.weakest)
    shown = explain(src, examples(frame, weakest, settings.errors, settings.correct), head)
    if len(shown):
        plots.image_grid(
            [overlay(src, r) for _, r in shown.iterrows()],
            [caption(r, head) for _, r in shown.iterrows()],
            f"{head} head, Grad-CAM: weakest classes' confident errors, then correct ones (green: face box)",
            out / f"attention_{head}.png",
            cols=settings.errors + settings.correct,
            fontsize=10,
        )
    measured = explain(src, measured_sample(frame, "truth", settings.per_class), head)
    classes = [
        {
            "class": labels.HEAD_NAMES[head][c],
            "face_share": _mean(g["face_share"]),
            "sd": float(g["face_share"].std()) if g["face_share"].notna().sum() > 1 else None,
            "images": int(g["face_share"].notna().sum()),
        }
        for c, g in measured.groupby("truth")
    ]
    share = _mean(measured["face_share"]) if len(measured) else None  # no detected face: nothing measured
    return {"classes": classes, "face_share": share, "weakest": [labels.HEAD_NAMES[head][c] for c in weakest],
            "face_area": _mean(measured["face_area"]) if len(measured) else None,
            "looks_outside": share is not None and share < settings.warn_below}  # fmt: skip


def attention_inputs(run: RunRef, records: Path, settings: AttentionSettings) -> Manifest:
    """What the report depends on: the run, each fold's checkpoint (its recorded digest), the crop records, the
    attention settings (the OOF follows from the checkpoints and the data)."""
    digests = {f: json.loads(run.done(f).read_text()).get("best_digest", "") for f in run.trained_folds()}
    inputs = {
        "run": read_manifest(run.dir)["digest"],
        "checkpoints": digest_of(digests),
        "records": file_digest(records),
    }
    return Manifest("attention", inputs, settings.model_dump())


def load_sources(cfg: Settings, run: RunRef, oof: pd.DataFrame, records: pd.DataFrame) -> Sources:
    run_cfg = run_config(cfg, run)
    device = torch.device("cpu")
    models = {f: load_fold_model(run.fold(f), f"fold {f}", device, run_cfg, run.config) for f in run.trained_folds()}
    crop = records[["image_path", "crop_path", "source", "x1", "y1", "x2", "y2", *FACE_COLUMNS]]
    rows = oof.merge(crop, on="image_path", how="inner")
    return Sources(run_cfg, models, rows, Inputs.of(run_cfg))


def attention_report(cfg: Settings, run: RunRef, oof: pd.DataFrame, out: Path) -> dict | None:
    """attention/attention.json and the per-head pictures, computed once per content (None: no face boxes yet)."""
    records_path = crop_dir(cfg) / "records.csv"
    records = pd.read_csv(records_path, keep_default_na=False) if records_path.exists() else pd.DataFrame()
    if not set(FACE_COLUMNS) <= set(records.columns):
        log.warning("%s: no face boxes recorded; run `make crop` to measure where the model looks", records_path)
        return None
    folder, manifest = out / "attention", attention_inputs(run, records_path, cfg.attention)
    if is_current(folder, manifest) and (folder / "attention.json").exists():
        return json.loads((folder / "attention.json").read_text())
    paths = cfg.paths.resolved
    records = records.assign(image_path=[str(paths.image_file(k)) for k in records["key"]])
    src = load_sources(cfg, run, oof.assign(image_path=oof["image_path"].astype(str)), records)
    report = {h: head_report(src, h, cfg.attention, folder) for h in labels.HEADS}
    sample = measured_sample(src.rows, "label", cfg.attention.grey_per_class)
    report = {
        "heads": report,
        "causal": causal_check(src, cfg.attention.grey_per_class),
        "embedding": embedding_view(src, sample, cfg.attention, folder) if len(sample) else None,
    }
    write_json(report, folder / "attention.json")
    write_manifest(folder, manifest)
    return report


def attention_sections(report: dict | None, settings: AttentionSettings) -> list[htmlpage.Section]:
    """The page's 'Where the model looks' section: warnings, face share per head and class, the greyed check, the
    pictures."""
    if report is None:
        return [
            htmlpage.Section("Where the model looks", ["<p>No face boxes recorded: run <code>make crop</code>.</p>"])
        ]
    heads, body = report["heads"], []
    for head, r in heads.items():
        if r["looks_outside"]:
            body.append(
                f"<p class='headline'><b>{head}</b> looks mostly outside the face (face share {r['face_share']:.2f} "
                f"&lt; {settings.warn_below}): it may read {WHERE_ELSE[head]}. The greyed-background check below "
                "says how much of its score depends on it.</p>"
            )
    shares = pd.DataFrame(
        [
            {
                "head": h,
                "class": c["class"],
                "face share": round(c["face_share"], 3),
                "sd": None if c.get("sd") is None else round(c["sd"], 3),
                "images": c["images"],
            }  # fmt: skip
            for h, r in heads.items()
            for c in r["classes"]
        ]  # fmt: skip
    )
    causal = pd.DataFrame(
        [
            {
                "head": h,
                "macro F1": round(c["f1"], 4),
                "background greyed": round(c["f1_background_greyed"], 4),
                "change": round(c["f1_background_greyed"] - c["f1"], 4),
                "images": c["images"],
            }
            for h, c in report["causal"].items()
        ]  # fmt: skip
    )
    body += [
        "<p>Face share: the Grad-CAM map's mass inside the face box over its total (the predicted class, each image "
        "explained by the fold model that held it out). Head averages: "
        + ", ".join(f"{h} <b>{_share(r['face_share'])}</b>" for h, r in heads.items())
        + f". A map spread evenly over the input would give {_share(_first_area(heads))}: the face box's share of "
        "the input's area.</p>",
        htmlpage.table(shares),
        "<p>The causal check: each head's macro F1 on the same OOF images, as they are and with everything outside "
        "the face box greyed out. A large drop means the head uses the background; background removal would then "
        "change what it learns.</p>",
        htmlpage.table(causal),
        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in causal_advice(report["causal"])) + "</ul>",
        *[htmlpage.image(f"attention/attention_{h}.png", f"Grad-CAM of the {h} head") for h in heads],
    ]
    return [htmlpage.Section("Where the model looks", body), embedding_section(report.get("embedding"))]


def embedding_section(view: dict | None) -> htmlpage.Section:
    if not view:
        return htmlpage.Section("Embedding view", ["<p>No OOF image with a detected face to map.</p>"])
    return htmlpage.Section(
        "Embedding view",
        [
            f"<p>Each fold model's penultimate features of {view['images']} OOF images it held out (t-SNE). An error "
            "inside another class's cloud is a look-alike; one among its own label's images whose nearest training "
            "images carry the predicted label may be a label problem.</p>",
            *interactive_link(view),
            htmlpage.image("attention/embedding.png", "t-SNE of OOF features per fold, coloured by each head"),
            htmlpage.image("attention/neighbours.png", "errors and their nearest training images")
            if view["neighbours"]
            else "<p>No error in the sample.</p>",
        ],
    )


def interactive_link(view: dict) -> list[str]:
    """The interactive map (plotly): which image a point is, on hover."""
    if not view.get("interactive"):
        return []
    target = f"attention/{view['interactive']}"
    return [
        f"<p><a href='{target}'>Open the interactive map</a>: hover a point to see its crop, person, image and "
        "labels; click a legend entry to hide a class; drag to zoom.</p>",
        f"<iframe src='{target}' title='interactive embedding map' style='width:100%;height:"
        f"{440 * len(view['folds']) + 80}px;border:1px solid #ddd'></iframe>",
    ]


def _mean(values: pd.Series) -> float | None:
    """The mean over maps with any mass (Grad-CAM is all zero where no feature speaks for the class), or None."""
    kept = values.dropna()
    return float(kept.mean()) if len(kept) else None


def _first_area(heads: dict) -> float | None:
    return next((r.get("face_area") for r in heads.values() if r.get("face_area") is not None), None)


def _share(value: float | None) -> str:
    return "not measured (no detected face)" if value is None else f"{value:.2f}"


BACKGROUND_DROP = 0.05  # macro F1 a head loses without the background before the page calls it a background reader


def causal_advice(causal: dict[str, dict]) -> list[str]:
    """The greyed-background check in words, per head: what the head reads and what that means for the crop."""
    lines = []
    for head, c in causal.items():
        drop = c["f1"] - c["f1_background_greyed"]
        if drop > BACKGROUND_DROP:
            lines.append(
                f"{head} loses {drop:.3f} macro F1 without the background: it reads {WHERE_ELSE[head]}; keep a wide "
                "crop margin (crop.margin 0.25 or more) rather than a tight face crop, or train it to do without "
                "(background suppression: augment.background=0.5)"
            )
        else:
            lines.append(f"{head} keeps its score without the background ({-drop:+.3f}): it reads the face")
    return lines


WHERE_ELSE = {"mask": "the background or clothes", "gender": "hair, clothes or background", "age": "hair or clothes"}
