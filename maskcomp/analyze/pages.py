"""Offline fold-level analysis from run files alone: reports/analysis/<exp>/index.html."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..core import labels
from ..core.config import Settings
from ..core.context import Context, stage
from ..core.fileio import write_csv, write_json
from ..core.manifests import read_manifest
from ..core.metrics import confusion, f1_per_class, macro_f1, scores
from ..ensemble.names import groups_file, submission_file
from ..ensemble.submission import eval_score, read_sidecar
from ..predict.infer import run_config
from ..report import htmlpage, plots
from ..runs import RunRef, read_learning_rates, read_metrics, read_oof, resolve_run, run_info
from ..train.track import log_analysis
from . import noise
from .attention import attention_report, attention_sections
from .levers import Evidence, levers_section
from .noise import NoiseSettings, held_for_review
from .runs_index import PAGE_RUN, runs_index

log = logging.getLogger(__name__)


def read_runs(cfg: Settings, spec: str) -> tuple[pd.DataFrame, dict[int, pd.DataFrame], RunRef]:
    """All folds' OOF rows (TTA re-scored where present) and metrics of the experiment's chosen run."""
    paths = cfg.paths.resolved
    ref = resolve_run(paths, spec, cfg.run if spec == cfg.experiment else "latest")
    return read_oof(ref, paths, tta=True), read_metrics(ref), ref


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, pd.DataFrame]:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    table = (
        pd.DataFrame({"bin": idx, "conf": conf, "correct": correct})
        .groupby("bin")
        .agg(conf=("conf", "mean"), acc=("correct", "mean"), n=("conf", "size"))
    )
    ece = float((table["n"] / len(conf) * (table["acc"] - table["conf"]).abs()).sum())
    return ece, table


HEADLINE_CLASSES = 3


def head_at_fault(y: np.ndarray, pred: np.ndarray, cls: int) -> str:
    """The head whose error most often turns images of class `cls` into another class."""
    wrong = (y == cls) & (pred != cls)
    if not wrong.any():
        return "none"
    true_h, pred_h = labels.head_labels(y[wrong]), labels.head_labels(pred[wrong])
    return max(labels.HEADS, key=lambda h: int((true_h[h] != pred_h[h]).sum()))


def headline(y: np.ndarray, pred: np.ndarray, per_class: pd.DataFrame) -> list[str]:
    """Where the macro F1 is lost: the weakest and never-predicted classes, the head responsible for each and its
    share of the macro F1 loss (what to try next follows from the run's evidence: levers.py)."""
    present = per_class[per_class["support"] > 0]
    loss = 1 - present["f1"]
    weakest = present.assign(share=loss / max(loss.sum(), 1e-9)).sort_values("f1").head(HEADLINE_CLASSES)
    never = [labels.class_name(c) for c in present["class"] if not (pred == c).any()]
    rows = []
    for r in weakest.itertuples():
        head = head_at_fault(y, pred, r._1)
        rows.append(
            f"<li><b>{html.escape(r.name)}</b> (class {r._1}): F1 {r.f1:.2f}, {r.share:.0%} of the macro F1 lost; "
            f"mostly the <b>{head}</b> head is wrong</li>"
        )
    return [
        "<div class='headline'><h2>Where the score is lost</h2>",
        f"<p>OOF macro F1 is {1 - loss.mean():.4f}: every class weighs 1/{len(present)}.</p><ul>",
        *rows,
        "</ul>",
        f"<p>Never predicted: {html.escape(', '.join(never)) if never else 'none'}.</p>",
    ]


@dataclass
class Analysis:
    """What the page shows, computed from run files alone (rendering is apart)."""

    experiment: str
    run: RunRef
    oof: pd.DataFrame
    metrics: dict[int, pd.DataFrame]
    folds: pd.DataFrame
    overall: dict
    per_class: pd.DataFrame
    ece: float
    reliability: pd.DataFrame
    candidates: pd.DataFrame

    @property
    def y(self) -> np.ndarray:
        return self.oof["label"].to_numpy()

    @property
    def probs(self) -> np.ndarray:
        return self.oof[labels.PROB_COLUMNS].to_numpy()

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(1)


def fold_table(oof: pd.DataFrame, metrics: dict[int, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for fold, grp in oof.groupby("fold"):
        s = scores(grp["label"].to_numpy(), grp[labels.PROB_COLUMNS].to_numpy())
        m = metrics[fold]
        rows.append(
            {
                "fold": fold,
                **{k: round(v, 4) for k, v in s.items()},
                "best_epoch": int(m.loc[m["f1"].idxmax(), "epoch"]),
            }
        )
    return pd.DataFrame(rows)


def per_class_table(y: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    cm = confusion(y, pred, labels.NUM_CLASSES)
    out = pd.DataFrame(
        {
            "class": range(labels.NUM_CLASSES),
            "name": [labels.class_name(c) for c in range(labels.NUM_CLASSES)],
            "support": np.bincount(y, minlength=labels.NUM_CLASSES),
            "f1": f1_per_class(y, pred, labels.NUM_CLASSES).round(4),
        }
    )
    out["precision"] = np.divide(np.diag(cm), cm.sum(0), out=np.zeros(len(cm)), where=cm.sum(0) > 0).round(4)
    out["recall"] = np.divide(np.diag(cm), cm.sum(1), out=np.zeros(len(cm)), where=cm.sum(1) > 0).round(4)
    return out


def compute(cfg: Settings, experiment: str) -> Analysis:
    oof, metrics, run = read_runs(cfg, experiment)
    y, probs = oof["label"].to_numpy(), oof[labels.PROB_COLUMNS].to_numpy()
    pred = probs.argmax(1)
    ece, reliability = expected_calibration_error(probs.max(1), pred == y)
    return Analysis(
        experiment,
        run,
        oof,
        metrics,
        fold_table(oof, metrics),
        scores(y, probs),
        per_class_table(y, pred),
        ece,
        reliability,
        noise.candidates(oof, NoiseSettings.from_config(cfg)),
    )


def write_plots(a: Analysis, cfg: Settings, out: Path) -> None:
    y, pred = a.y, a.pred
    plots.confusion(
        confusion(y, pred, 18),
        [labels.short_name(c) for c in range(18)],
        "OOF confusion (18 classes)",
        out / "confusion_18.png",
    )
    true_h, pred_h = labels.head_labels(y), labels.head_labels(pred)
    for head, n in labels.HEADS.items():
        plots.confusion(
            confusion(true_h[head], pred_h[head], n),
            labels.HEAD_NAMES[head],
            f"OOF confusion: {head}",
            out / f"confusion_{head}.png",
        )
    plots.curves(a.metrics, read_learning_rates(a.run), out / "curves.png")
    plots.reliability(a.reliability, a.ece, out / "reliability.png")
    crops = _crop_paths(cfg)
    wrong = confidently_wrong(a.oof, a.probs, pred, y)
    images = [_thumb(crops.get(p, p)) for p in wrong["image_path"]]
    captions = [
        f"true {labels.short_name(t)}, age {age}\npred {labels.short_name(p)} (p={c:.2f})\n{pid} {Path(path).stem}"
        for t, age, p, c, pid, path in zip(
            wrong["label"], wrong["age"], wrong["pred"], wrong["conf"], wrong["person_id"], wrong["image_path"]
        )
    ]
    title = "most confidently wrong, one image per person (W/I/N: mask worn, incorrect, not worn)"
    plots.image_grid(images, captions, title, out / WRONG_GALLERY)
    candidate_strips(a, crops, out / LABEL_NOISE)


GALLERY_TILES = 24
WRONG_GALLERY, LABEL_NOISE, GROUPS = "wrong_gallery.jpg", "label_noise.jpg", "groups.jpg"  # photo grids: JPEG


def confidently_wrong(oof: pd.DataFrame, probs: np.ndarray, pred: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """The wrongly predicted images, most confident first, one per person (its most confident mistake): a person
    the model misreads on all 7 images would otherwise fill the gallery."""
    wrong = oof.assign(conf=probs.max(1), pred=pred)[pred != y].sort_values("conf", ascending=False, kind="stable")
    return wrong.drop_duplicates("person_id").head(GALLERY_TILES)


STRIPS_PER_KIND = 4  # persons shown as thumbnails per kind of fix, from the top of the candidate list


def candidate_strips(a: Analysis, crops: dict[str, str], path: Path) -> None:
    """The top candidates of each kind (systematic ones left out), each person's 7 images in a row; the first
    caption says the fix, its confidence and whether it is automatic, the others name the image."""
    found = a.candidates[~a.candidates["systematic"].astype(bool)]
    shown = found.groupby("fix", sort=False).head(STRIPS_PER_KIND)
    images, captions = [], []
    for r in shown.itertuples():
        rows = a.oof[a.oof["person_id"] == r.person_id]
        rows = rows.assign(order=[labels.IMAGE_STEMS.index(Path(p).stem) for p in rows["image_path"]]).sort_values(
            "order"
        )
        head = f"{r.person_id}: {r.fix}\n{r.current} -> {r.suggested}\nconf {r.confidence:.2f}, " + (
            "automatic" if r.auto else "review"
        )
        for i, p in enumerate(rows["image_path"]):
            images.append(_thumb(crops.get(p, p)))
            captions.append(head if i == 0 else Path(p).stem)
    if images:
        plots.image_grid(
            images,
            captions,
            "label-noise candidates: the most likely of each kind (one person per row)",
            path,
            cols=len(labels.IMAGE_STEMS),
            fontsize=9,
        )


def analyze_experiment(cfg: Settings, experiment: str) -> Path:
    out = cfg.paths.resolved.reports / "analysis" / experiment.replace("@", "-")
    a = compute(cfg, experiment)
    write_csv(a.per_class, out / "per_class.csv")
    write_csv(a.candidates, out / "label_fix_candidates.csv")
    write_json({"experiment": a.run.experiment, "run": a.run.run_id}, out / PAGE_RUN)
    write_plots(a, cfg, out)
    attention_maps = attention_report(cfg, a.run, a.oof, out)
    index = render_page(a, cfg, out, attention_sections(attention_maps, cfg.attention))
    log.info("wrote %s", index)
    log_analysis(cfg, a.run.dir, a.run.run_id, a.overall, a.y, a.pred, sorted([*out.glob("*.png"), *out.glob("*.jpg")]))
    return index


def page_links(a: Analysis, cfg: Settings, out: Path) -> list[str]:
    """The run's files and the other report pages, as relative links (the pages work after reports/ is moved)."""
    paths = cfg.paths.resolved
    own = [
        (a.run.config, "config"),
        (a.run.oof, "OOF"),
        (out / "per_class.csv", "per-class CSV"),
        (out / "label_fix_candidates.csv", "candidates CSV"),
    ]
    others = [
        (submission_file(cfg), "submission"),
        (paths.reports / "eda" / "index.html", "EDA"),
        (paths.reports / "crop" / "index.html", "crop report"),
    ]
    found = [(p, name) for p, name in others if p.exists()] + [(paths.reports / "index.html", "all runs")]
    return [htmlpage.link(p, out, name) for p, name in own + found]


def page_meta(a: Analysis, cfg: Settings, out: Path) -> list[str]:
    """The header lines: run, creation, code, data digests, files."""
    info, manifest = run_info(a.run), read_manifest(a.run.dir)
    data = ", ".join(f"{k} {v[:12]}" for k, v in (manifest or {}).get("inputs", {}).items() if k != "folds_csv")
    return [
        f"Run <b>{html.escape(a.run.label)}</b> created {html.escape(str(info.get('created', '?')))}, code "
        f"{html.escape(str(info.get('git_commit') or 'unknown'))}; data digests: {html.escape(data or 'unknown')} "
        f"({htmlpage.link(a.run.manifest, out, 'manifest')})",
        "Files: " + " · ".join(page_links(a, cfg, out)),
    ]


def score_sections(a: Analysis) -> list[htmlpage.Section]:
    """Folds, per class with the confusions, curves, calibration and the most confident errors."""
    summary = a.folds.drop(columns=["fold", "best_epoch"]).agg(["mean", "std"]).round(4).reset_index(names="")
    confusions = [
        htmlpage.image(f"{n}.png", n) for n in ("confusion_18", "confusion_mask", "confusion_gender", "confusion_age")
    ]
    return [
        htmlpage.Section("Folds", [htmlpage.table(a.folds), htmlpage.table(summary)]),
        htmlpage.Section("Per class", [htmlpage.table(a.per_class), *confusions]),
        htmlpage.Section("Training curves", [htmlpage.image("curves.png", "loss, F1 and learning rate per fold")]),
        htmlpage.Section("Calibration", [htmlpage.image("reliability.png", "reliability diagram")]),
        htmlpage.Section("Most confidently wrong", [htmlpage.image(WRONG_GALLERY, "most confidently wrong images")]),
    ]


def render_page(a: Analysis, cfg: Settings, out: Path, extra: list[htmlpage.Section] = ()) -> Path:
    """The experiment's analysis page: where the score is lost first, then every section (`extra`: where the model
    looks)."""
    submission = submission_file(cfg)
    evidence = Evidence(run_config(cfg, a.run), a.oof, a.pred, read_sidecar(submission))
    lead = [
        *headline(a.y, a.pred, a.per_class),
        *levers_section(evidence, eval_score(submission, cfg.paths.resolved.eval_answers)),
        "</div>",
        f"<p>OOF macro F1 (all {len(a.oof)} images): "
        f"<b>{a.overall['f1']:.4f}</b>; accuracy {a.overall['acc']:.4f}; ECE {a.ece:.4f}</p>",
    ]
    sections = [*score_sections(a), *extra, noise_section(a, cfg, out), *group_strips(cfg, out)]
    meta = page_meta(a, cfg, out)
    return htmlpage.render(f"Analysis: {a.experiment}", meta, sections, out / "index.html", lead)


def noise_section(a: Analysis, cfg: Settings, out: Path) -> htmlpage.Section:
    settings = NoiseSettings.from_config(cfg)
    found = a.candidates
    body = [
        f"<p>{len(found)} suspects: {int(found['auto'].sum())} confident enough to apply automatically "
        f"(estimated precision >= {settings.auto_min_confidence}; <code>make relabel</code> writes them as a "
        f"label-fixes "
        f"file), {int((~found['auto'] & ~found['systematic']).sum())} to review, {int(found['systematic'].sum())} "
        "systematic (a class the model rarely gets right: its failure, not label noise; listed last). Confidence is "
        "the estimated share of real errors among persons at least this suspicious.</p>"
    ]
    held = held_for_review(found, settings)
    if held:
        items = "".join(f"<li>{html.escape(why)}</li>" for why in held)
        body.append(
            "<p>Confident candidates that still go to review (<code>make review</code>): a kind is fixed automatically "
            f"only where planted label errors showed its automatic fixes to be right often enough.</p><ul>{items}</ul>"
        )
    if (out / LABEL_NOISE).exists() and len(found):
        body.append(htmlpage.image(LABEL_NOISE, "top label-noise candidates"))
    shown = found.head(settings.top)
    body.append(htmlpage.table(shown) if len(shown) else "<p>No candidate.</p>")
    return htmlpage.Section("Label-noise candidates", body)


STRIP_GROUPS = 3  # groups shown from each end of the confidence order


def group_strips(cfg: Settings, out: Path) -> list[htmlpage.Section]:
    """The eval person groups of the submission (if grouping was applied): the least and the most confident groups,
    one strip of thumbnails each, captioned with each image's similarity to its group."""
    paths = cfg.paths.resolved
    groups_csv = groups_file(submission_file(cfg))
    if not groups_csv.exists():
        return []
    groups = pd.read_csv(groups_csv, dtype={"ImageID": str, "group": str})
    grouped = groups[groups["grouped"]]
    if grouped.empty:
        return []
    order = grouped.groupby("group")["confidence"].min().sort_values()
    chosen = list(dict.fromkeys([*order.index[:STRIP_GROUPS], *order.index[-STRIP_GROUPS:]]))
    images, captions = [], []
    for g in chosen:
        members = grouped[grouped["group"] == g].head(len(labels.IMAGE_STEMS))
        for image_id, conf in zip(members["ImageID"], members["confidence"]):
            images.append(_thumb(str(paths.eval_images / image_id)))
            captions.append(f"group {g[:8]}: sim {conf:.2f}")
        images += [np.full((128, 96, 3), 255, np.uint8)] * (len(labels.IMAGE_STEMS) - len(members))
        captions += [""] * (len(labels.IMAGE_STEMS) - len(members))
    plots.image_grid(
        images,
        captions,
        "eval person groups: least (top) and most confident",
        out / GROUPS,
        cols=len(labels.IMAGE_STEMS),
    )
    share = groups["grouped"].mean()
    return [
        htmlpage.Section(
            "Person groups (eval)",
            [
                f"<p>{share:.0%} of the eval images were grouped into persons "
                f"({htmlpage.link(groups_csv, out, groups_csv.name)}); "
                "each caption is the image's thumbnail similarity to its group's unmasked photo (1.00: the anchor "
                "itself).</p>",
                htmlpage.image(GROUPS, "eval person groups"),
            ],
        )
    ]


def compare_experiments(cfg: Settings, experiments: list[str]) -> Path:
    paths = cfg.paths.resolved
    out = paths.reports / "analysis" / "compare"
    table, errors = [], {}
    for exp in experiments:
        oof, _, _ = read_runs(cfg, exp)
        oof = oof.sort_values("image_path").reset_index(drop=True)
        y, pred = oof["label"].to_numpy(), oof[labels.PROB_COLUMNS].to_numpy().argmax(1)
        table.append(
            {
                "experiment": exp,
                "oof_macro_f1": round(macro_f1(y, pred), 4),
                **{f"f1_{c}": round(v, 3) for c, v in enumerate(f1_per_class(y, pred, 18))},
            }
        )
        errors[exp] = (pred != y).astype(float)
    table = pd.DataFrame(table)
    corr = pd.DataFrame(errors).corr().round(3)
    write_csv(table, out / "experiments.csv")
    sections = [
        htmlpage.Section("OOF macro F1 and per-class F1", [htmlpage.table(table)]),
        htmlpage.Section("Correlation of errors (lower: better ensemble partners)", [corr.to_html(border=0)]),
    ]
    return htmlpage.render(
        "Experiments side by side", [", ".join(map(html.escape, experiments))], sections, out / "index.html"
    )


def _crop_paths(cfg: Settings) -> dict[str, str]:
    from ..crop.stage import crop_dir

    records = crop_dir(cfg) / "records.csv"
    if not records.exists():
        return {}
    df = pd.read_csv(records, keep_default_na=False)
    paths = cfg.paths.resolved
    return {paths.image_file(key): crop for key, crop in zip(df["key"], df["crop_path"])}


def _thumb(path: str) -> np.ndarray:
    img = cv2.imread(path) if Path(path).is_file() else None
    if img is None:  # a picture only: the page says so and shows a grey tile, no number on it changes
        log.warning("%s: cannot read this image for a thumbnail; a grey tile stands in its place", path)
        return np.full((128, 96, 3), 128, np.uint8)
    return cv2.cvtColor(cv2.resize(img, (96, 128)), cv2.COLOR_BGR2RGB)


@stage
def analyze(ctx: Context) -> list[Path]:
    cfg = ctx.cfg
    experiments = cfg.ensemble.experiments or [cfg.experiment]
    pages = [analyze_experiment(cfg, e) for e in experiments]
    if len(experiments) > 1:
        pages.append(compare_experiments(cfg, experiments))
    pages.append(runs_index(cfg))
    return pages


WEAKEST = 3


def closing_summary(cfg: Settings, pages: list[Path]) -> str:
    """What `make all` produced, in a few lines: submission, CV (nested), eval score when answers exist, the report
    pages and the weakest classes of the OOF predictions."""
    paths = cfg.paths.resolved
    submission = submission_file(cfg)
    lines = ["", "== summary"]
    if submission.exists():
        lines.append(f"submission: {submission} (CV macro F1, nested: {read_sidecar(submission)['cv_macro_f1']:.4f})")
        score = eval_score(submission, paths.eval_answers)
        if score is not None:
            lines.append(f"eval macro F1 against {paths.eval_answers.name}: {score:.4f}")
    else:
        lines.append(f"submission: none yet at {submission} (run `make ensemble`)")
    lines += [f"report: {page}" for page in pages]
    per_class = pd.read_csv(pages[0].parent / "per_class.csv").sort_values("f1")
    weak = per_class[per_class["support"] > 0].head(WEAKEST)
    lines.append("weakest classes (OOF F1): " + ", ".join(f"{r.name} {r.f1:.2f}" for r in weak.itertuples()))
    return "\n".join(lines)
