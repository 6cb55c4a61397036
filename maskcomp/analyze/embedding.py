"""The embedding view on the analysis page: each fold model's penultimate features (its backbone's pooled output)
of a fixed sample of the OOF images it held out, as a 2-D map (scikit-learn's t-SNE) coloured by each head's label
with the errors marked; beside the fold's most confident errors, their nearest training images by the same model's
features (cosine), so a person sees whether an error is a look-alike or a label problem. The same map is written as an
interactive page (plotly, offline: plotly.min.js beside it): hovering a point shows its crop, person, image and labels.
"""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from ..core import labels  # noqa: E402
from ..core.fileio import write_text  # noqa: E402
from ..core.settings import AttentionSettings  # noqa: E402
from ..predict.neighbours import pooled_features  # noqa: E402
from ..report import plots  # noqa: E402
from ..train.models import probs18  # noqa: E402

NEIGHBOURS = 3
ERRORS_PER_FOLD = 3


def features(model: torch.nn.Module, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised penultimate features, 18-class probabilities) of a batch."""
    with torch.no_grad():
        pooled, feats = pooled_features(model, batch)
        probs = probs18({name: head(pooled) for name, head in model.heads.items()} | _age(model, pooled))
    return feats.numpy(), probs.numpy()


def _age(model, pooled) -> dict:
    """An ordinal head's age groups, as the model's forward makes them."""
    if "age_ord" not in model.heads:
        return {}
    from ..train.models import ordinal_age_log_probs

    return {"age": ordinal_age_log_probs(model.heads["age_ord"](pooled))}


def tsne_2d(feats: np.ndarray) -> np.ndarray:
    perplexity = float(max(2, min(30, (len(feats) - 1) // 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(feats)


def fold_view(src, fold: int, sample: pd.DataFrame, settings: AttentionSettings) -> dict:
    """One fold: the map of its held-out sample and its most confident errors with their nearest training images."""
    model = src.models[fold]
    train = src.rows[src.rows["fold"] != fold]
    train = train.sample(min(len(train), settings.embedding_train), random_state=0)
    held_feats, held_probs = features(model, src.inputs.batch(sample["crop_path"].tolist()))
    train_feats, _ = features(model, src.inputs.batch(train["crop_path"].tolist()))
    pred = held_probs.argmax(1)
    wrong = np.flatnonzero(pred != sample["label"].to_numpy())
    worst = wrong[np.argsort(-held_probs[wrong].max(1))][:ERRORS_PER_FOLD]
    similarity = held_feats[worst] @ train_feats.T
    nearest = np.argsort(-similarity, axis=1)[:, :NEIGHBOURS]
    return {
        "xy": tsne_2d(held_feats) if len(sample) > 4 else np.zeros((len(sample), 2)),
        "label": sample["label"].to_numpy(),
        "pred": pred,
        "rows": sample,
        "errors": [
            (sample.iloc[i], pred[i], [(train.iloc[j], similarity[k, j]) for j in nearest[k]])
            for k, i in enumerate(worst)
        ],  # fmt: skip
    }


def head_errors(truth: dict[str, np.ndarray], guess: dict[str, np.ndarray], head: str) -> np.ndarray:
    """Where one head's prediction is wrong."""
    return truth[head] != guess[head]


def draw_maps(views: dict[int, dict], path: Path) -> Path:
    """Folds as rows, heads as columns; colour = the head's true class, x = this head's own wrong prediction (a mask
    panel marks mask errors only: an image with the right mask and the wrong age is not a mask error)."""
    fig, axes = plt.subplots(len(views), 3, figsize=(13, 4 * len(views)), squeeze=False)
    for row, (fold, v) in enumerate(views.items()):
        truth, guess = labels.head_labels(v["label"]), labels.head_labels(v["pred"])
        for col, head in enumerate(labels.HEADS):
            ax, wrong = axes[row, col], head_errors(truth, guess, head)
            for c, name in enumerate(labels.HEAD_NAMES[head]):
                keep = (truth[head] == c) & ~wrong
                ax.scatter(*v["xy"][keep].T, s=14, label=name, alpha=0.8)
                bad = (truth[head] == c) & wrong
                ax.scatter(*v["xy"][bad].T, s=40, marker="x", color=ax.collections[-1].get_facecolor()[:1])
            ax.set_title(f"fold {fold}: coloured by true {head} (x: {head} wrong, {wrong.mean():.0%})", fontsize=11)
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
            ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    return plots.save(fig, path)


def draw_neighbours(src, views: dict[int, dict], path: Path) -> Path | None:
    """Each shown error, then its nearest training images by the same fold model's features."""
    images, captions = [], []
    for fold, v in views.items():
        for row, pred, near in v["errors"]:
            images.append((src.inputs.rgb(row["crop_path"]) * 255).astype(np.uint8))
            captions.append(
                f"fold {fold} error\ntrue {labels.short_name(row['label'])}\npred {labels.short_name(pred)}"
            )
            for other, sim in near:
                images.append((src.inputs.rgb(other["crop_path"]) * 255).astype(np.uint8))
                name = labels.short_name(other["label"])
                captions.append(f"neighbour, cos {sim:.2f}\nlabel {name}\nperson {other['person_id']}")
    if not images:
        return None
    title = "OOF errors (left) and their nearest training images by the same fold model's features"
    return plots.image_grid(images, captions, title, path, cols=1 + NEIGHBOURS, fontsize=9)


THUMB_HEIGHT = 96  # pixels of the crop shown beside the interactive map on hover
HOVER_SCRIPT = """
const plot=document.getElementById('{plot_id}');const box=document.getElementById('hovered');
plot.on('plotly_hover',e=>{const d=e.points[0].customdata;box.querySelector('img').src=d[5];
 box.querySelector('span').textContent=d[0]+' / '+d[1]+': true '+d[2]+', predicted '+d[3]+', age '+d[4];});
"""


def thumbnail(src, crop_path: str) -> str:
    """A small JPEG of the crop as a data URI (the page carries its own pictures: it opens anywhere)."""
    import cv2

    rgb = (src.inputs.rgb(crop_path) * 255).astype(np.uint8)
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(width * THUMB_HEIGHT / height)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode() if ok else ""


def hover_data(src, v: dict) -> np.ndarray:
    """Per point: person, image, true class, predicted class, age, thumbnail."""
    rows = v["rows"]
    return np.array(
        [
            [
                r.person_id,
                Path(str(r.image_path)).name,
                labels.short_name(t),
                labels.short_name(p),
                r.age,
                thumbnail(src, r.crop_path),
            ]  # fmt: skip
            for r, t, p in zip(rows.itertuples(), v["label"], v["pred"])
        ],
        dtype=object,
    ).reshape(len(rows), 6)


def interactive_maps(src, views: dict[int, dict], path: Path) -> Path:
    """The maps of draw_maps as one plotly page: hover = the crop, person, image, labels; click a legend entry to
    hide a class."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.offline import get_plotlyjs
    from plotly.subplots import make_subplots

    titles = [f"fold {f}: true {h} (x: {h} wrong)" for f in views for h in labels.HEADS]
    fig = make_subplots(rows=len(views), cols=3, subplot_titles=titles, horizontal_spacing=0.05)
    for row, (fold, v) in enumerate(views.items(), start=1):
        truth, guess, data = labels.head_labels(v["label"]), labels.head_labels(v["pred"]), hover_data(src, v)
        for col, head in enumerate(labels.HEADS, start=1):
            wrong = head_errors(truth, guess, head)
            for c, name in enumerate(labels.HEAD_NAMES[head]):
                for bad in (False, True):
                    keep = (truth[head] == c) & (wrong == bad)
                    fig.add_trace(go.Scatter(
                        x=v["xy"][keep, 0], y=v["xy"][keep, 1], mode="markers", customdata=data[keep],
                        name=f"{head}: {name}" + (" (wrong)" if bad else ""), legendgroup=f"{head}{c}{bad}",
                        showlegend=row == 1, marker={"symbol": "x" if bad else "circle", "size": 10 if bad else 7,
                                                     "color": PALETTE[c]},
                        hovertemplate="%{customdata[0]} / %{customdata[1]}<br>true %{customdata[2]}<br>"
                        "predicted %{customdata[3]}<br>age %{customdata[4]}<extra></extra>",
                    ), row=row, col=col)  # fmt: skip
    fig.update_layout(height=420 * len(views), font={"size": 14}, margin={"t": 60, "l": 40, "r": 20, "b": 40})
    fig.update_xaxes(title_text="t-SNE 1")
    fig.update_yaxes(title_text="t-SNE 2")
    plotly_js = path.parent / "plotly.min.js"
    if not plotly_js.exists():
        write_text(get_plotlyjs(), plotly_js)
    page = pio.to_html(fig, include_plotlyjs="plotly.min.js", full_html=True, post_script=HOVER_SCRIPT)
    hovered = (
        "<div id='hovered' style='position:fixed;right:12px;bottom:12px;background:#fff;border:1px solid #ccc;"
        "padding:6px;font:14px system-ui;z-index:10;max-width:260px'><img alt='hovered crop' style='height:"
        f"{THUMB_HEIGHT}px;display:block'><span>hover a point</span></div>"
    )
    return write_text(page.replace("<body>", "<body>" + hovered, 1), path)


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c")  # matplotlib's first three: the static map's colours


def embedding_view(src, sample: pd.DataFrame, settings: AttentionSettings, out: Path) -> dict:
    views = {int(f): fold_view(src, int(f), part, settings) for f, part in sample.groupby("fold")}
    draw_maps(views, out / "embedding.png")
    interactive_maps(src, views, out / "embedding.html")
    drawn = draw_neighbours(src, views, out / "neighbours.png")
    shown = sum(len(v["errors"]) for v in views.values())
    return {
        "folds": sorted(views),
        "images": int(len(sample)),
        "errors_shown": shown,
        "neighbours": drawn is not None,
        "interactive": "embedding.html",
    }
