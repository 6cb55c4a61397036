"""Offline fold-level analysis from run files alone: reports/analysis/<exp>/index.html."""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import labels, plots
from .config import Config
from .fileio import write_csv, write_text
from .metrics import confusion, f1_per_class, macro_f1, scores
from .paths import Paths
from .runs import RunRef, list_runs, read_metrics, read_oof, resolve_run, run_info

log = logging.getLogger(__name__)



def read_runs(cfg: Config, spec: str) -> tuple[pd.DataFrame, dict[int, pd.DataFrame], RunRef]:
    """All folds' OOF rows (TTA re-scored where present) and metrics of the experiment's chosen run."""
    ref = resolve_run(Paths.from_config(cfg), spec, cfg["run"] if spec == cfg["experiment"] else "latest")
    return read_oof(ref, tta=True), read_metrics(ref), ref


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> tuple[float, pd.DataFrame]:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    table = pd.DataFrame({"bin": idx, "conf": conf, "correct": correct}).groupby("bin").agg(
        conf=("conf", "mean"), acc=("correct", "mean"), n=("conf", "size"))
    ece = float((table["n"] / len(conf) * (table["acc"] - table["conf"]).abs()).sum())
    return ece, table


def label_noise_candidates(oof: pd.DataFrame, top: int = 50) -> pd.DataFrame:
    """Rows in the label-fixes format (person_id, fix, value, note), most suspicious first.

    Image level: cleanlab's find_label_issues on the OOF probabilities, pooled per person for gender
    and age (a person's 7 images share them). Pair level: a person whose incorrect_mask image looks
    'not worn' and whose normal image looks 'incorrect' is a swap candidate."""
    from cleanlab.filter import find_label_issues

    y = oof["label"].to_numpy()
    probs = oof[labels.PROB_COLUMNS].to_numpy()
    issues = find_label_issues(y, probs, filter_by="prune_by_noise_rate") if len(np.unique(y)) > 1 else np.zeros(len(y), bool)
    rows = []
    gender_p = oof[[f"gender_p{i}" for i in range(2)]].to_numpy()
    age_p = oof[[f"age_p{i}" for i in range(3)]].to_numpy()
    frame = oof.assign(issue=issues, p_other_gender=1 - gender_p[np.arange(len(y)), oof["gender_label"]],
                       p_true_age=age_p[np.arange(len(y)), oof["age_group"]], age_pred=age_p.argmax(1))
    for pid, g in frame.groupby("person_id"):
        flagged = int(g["issue"].sum())
        if g["p_other_gender"].mean() > 0.5:
            value = labels.GENDER_NAMES[1 - int(g["gender_label"].iloc[0])]
            rows.append({"person_id": pid, "fix": "gender", "value": value, "score": g["p_other_gender"].mean(),
                         "note": f"mean p(other gender) {g['p_other_gender'].mean():.2f}; cleanlab flagged {flagged}/7 images"})
        if g["p_true_age"].mean() < 0.3:
            grp = int(np.bincount(g["age_pred"], minlength=3).argmax())
            rows.append({"person_id": pid, "fix": "age", "value": "", "score": 1 - g["p_true_age"].mean(),
                         "note": f"age {g['age'].iloc[0]} looks {labels.AGE_NAMES[grp]} (mean p(true age group) {g['p_true_age'].mean():.2f}); set the true age"})
        inc, nor = g[g["mask"] == 1], g[g["mask"] == 2]
        if len(inc) and len(nor):
            p_swap = float(inc[["mask_p2"]].to_numpy().mean() * nor[["mask_p1"]].to_numpy().mean())
            if p_swap > 0.25:
                rows.append({"person_id": pid, "fix": "swap_incorrect_normal", "value": "", "score": p_swap,
                             "note": f"incorrect_mask looks not-worn and normal looks incorrect (p {p_swap:.2f})"})
    out = pd.DataFrame(rows, columns=["person_id", "fix", "value", "score", "note"])
    return out.sort_values("score", ascending=False).head(top).reset_index(drop=True)


STYLE = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:24px auto;"
         "padding:0 16px;color:#222;line-height:1.45}table{border-collapse:collapse;font-size:13px;margin:8px 0}"
         "th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f3f5f7}"
         "tr:nth-child(even) td{background:#fafbfc}img{max-width:100%;margin:6px 0}h2{margin-top:32px;"
         "border-bottom:2px solid #e4e7eb;padding-bottom:4px}.meta{color:#555;font-size:13px}"
         ".headline{background:#fff7e6;border-left:4px solid #f0a020;padding:8px 16px;margin:16px 0}")
LEVERS = {
    "age": "oversample >=60 (folds.oversample.targets={2: 0.15}), train.age_old_threshold=58 with "
           "train.drop_age_bands, a soft-F1 loss term (loss.terms), model.head=ordinal, infer.person_grouping",
    "gender": "data.known_label_fixes=true and the label-noise candidates below, infer.person_grouping",
    "mask": "the crop report (reports/crop/: fallback crops), swap_incorrect_normal label fixes, augment settings",
}
HEADLINE_CLASSES = 3


def head_at_fault(y: np.ndarray, pred: np.ndarray, cls: int) -> str:
    """The head whose error most often turns images of class `cls` into another class."""
    wrong = (y == cls) & (pred != cls)
    if not wrong.any():
        return "none"
    true_h, pred_h = labels.head_labels(y[wrong]), labels.head_labels(pred[wrong])
    return max(labels.HEADS, key=lambda h: int((true_h[h] != pred_h[h]).sum()))


def headline(y: np.ndarray, pred: np.ndarray, per_class: pd.DataFrame) -> list[str]:
    """Where the macro F1 is lost: the weakest and never-predicted classes, the head responsible for each, its share
    of the macro F1 loss, and the config levers for that head."""
    present = per_class[per_class["support"] > 0]
    loss = 1 - present["f1"]
    weakest = present.assign(share=loss / max(loss.sum(), 1e-9)).sort_values("f1").head(HEADLINE_CLASSES)
    never = [labels.class_name(c) for c in present["class"] if not (pred == c).any()]
    rows, heads = [], []
    for r in weakest.itertuples():
        head = head_at_fault(y, pred, r._1)
        heads.append(head)
        rows.append(f"<li><b>{html.escape(r.name)}</b> (class {r._1}): F1 {r.f1:.2f}, {r.share:.0%} of the macro F1 lost; "
                    f"mostly the <b>{head}</b> head is wrong</li>")
    levers = [f"<li>{head}: {html.escape(LEVERS[head])}</li>" for head in dict.fromkeys(heads) if head in LEVERS]
    return ["<div class='headline'><h2>Where the score is lost</h2>",
            f"<p>OOF macro F1 is {1 - loss.mean():.4f}: every class weighs 1/{len(present)}.</p><ul>", *rows, "</ul>",
            f"<p>Never predicted: {html.escape(', '.join(never)) if never else 'none'}.</p>",
            "<p>Levers to try:</p><ul>", *levers, "</ul></div>"]


def analyze_experiment(cfg: Config, experiment: str) -> Path:
    paths = Paths.from_config(cfg)
    out = paths.reports / "analysis" / experiment.replace("@", "-")
    oof, metrics, run = read_runs(cfg, experiment)
    y = oof["label"].to_numpy()
    probs = oof[labels.PROB_COLUMNS].to_numpy()
    pred = probs.argmax(1)

    fold_rows = []
    for fold, grp in oof.groupby("fold"):
        s = scores(grp["label"].to_numpy(), grp[labels.PROB_COLUMNS].to_numpy())
        m = metrics[fold]
        fold_rows.append({"fold": fold, **{k: round(v, 4) for k, v in s.items()}, "best_epoch": int(m.loc[m["f1"].idxmax(), "epoch"])})
    folds = pd.DataFrame(fold_rows)
    summary = folds.drop(columns=["fold", "best_epoch"]).agg(["mean", "std"]).round(4)
    overall = scores(y, probs)

    per_class = pd.DataFrame({"class": range(18), "name": [labels.class_name(c) for c in range(18)],
                              "support": np.bincount(y, minlength=18),
                              "f1": f1_per_class(y, pred, 18).round(4)})
    cm = confusion(y, pred, 18)
    per_class["precision"] = np.divide(np.diag(cm), cm.sum(0), out=np.zeros(18), where=cm.sum(0) > 0).round(4)
    per_class["recall"] = np.divide(np.diag(cm), cm.sum(1), out=np.zeros(18), where=cm.sum(1) > 0).round(4)
    write_csv(per_class, out / "per_class.csv")
    plots.confusion(cm, [labels.short_name(c) for c in range(18)], "OOF confusion (18 classes)", out / "confusion_18.png")
    true_h, pred_h = labels.head_labels(y), labels.head_labels(pred)
    names = {"mask": labels.MASK_NAMES, "gender": labels.GENDER_NAMES, "age": labels.AGE_NAMES}
    for head, n in labels.HEADS.items():
        plots.confusion(confusion(true_h[head], pred_h[head], n), names[head], f"OOF confusion: {head}", out / f"confusion_{head}.png")

    fig, axes = plots.plt.subplots(1, 3, figsize=(14, 3.5))
    for fold, m in metrics.items():  # one colour per fold in every panel
        colour = f"C{fold % 10}"
        axes[0].plot(m["epoch"], m["train_loss"], color=colour, label=f"fold {fold} train")
        axes[0].plot(m["epoch"], m["val_loss"], "--", color=colour, label=f"fold {fold} validation")
        axes[1].plot(m["epoch"], m["f1"], "o-", color=colour, label=f"fold {fold}")
        axes[2].plot(m["epoch"], m["lr"], "o-", color=colour, label=f"fold {fold}")
    for ax, title, ylabel in zip(axes, ("loss", "validation macro F1", "learning rate (end of epoch)"), ("loss", "macro F1", "lr")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    plots.save(fig, out / "curves.png")

    conf = probs.max(1)
    ece, bins = expected_calibration_error(conf, pred == y)
    fig, ax = plots.plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--")
    ax.plot(bins["conf"], bins["acc"], "o-")
    for x, acc, n in zip(bins["conf"], bins["acc"], bins["n"]):
        ax.annotate(str(int(n)), (x, acc), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_title(f"reliability (ECE {ece:.3f}; numbers: images per bin)", fontsize=10)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    plots.save(fig, out / "reliability.png")

    wrong = oof.assign(conf=conf, pred=pred)[pred != y].sort_values("conf", ascending=False).head(24)
    crops = _crop_paths(cfg)
    images = [_thumb(crops.get(p, p)) for p in wrong["image_path"]]
    captions = [f"true {labels.short_name(t)}\npred {labels.short_name(p)} (p={c:.2f})\n{pid} {Path(path).stem}"
                for t, p, c, pid, path in zip(wrong["label"], wrong["pred"], wrong["conf"], wrong["person_id"], wrong["image_path"])]
    plots.image_grid(images, captions, "most confidently wrong (W/I/N: mask worn, incorrect, not worn)", out / "wrong_gallery.png")

    candidates = label_noise_candidates(oof)
    write_csv(candidates[["person_id", "fix", "value", "note"]], out / "label_fix_candidates.csv")

    info = run_info(run)
    page = [f"<html><head><meta charset='utf-8'><title>{html.escape(experiment)}</title><style>{STYLE}</style></head><body>",
            f"<h1>Analysis: {html.escape(experiment)}</h1>",
            f"<p class='meta'>Run <b>{html.escape(run.label)}</b> created {html.escape(str(info.get('created', '?')))}, "
            f"code {html.escape(str(info.get('git_commit') or 'unknown'))}; files in {html.escape(str(run.dir))} "
            f"(<a href='{html.escape(run.dir.as_uri())}/config.yaml'>config</a>, "
            f"<a href='{html.escape(run.dir.as_uri())}/oof.csv'>OOF</a>)</p>",
            *headline(y, pred, per_class),
            f"<p>OOF macro F1 (all {len(oof)} images): <b>{overall['f1']:.4f}</b>; accuracy {overall['acc']:.4f}; "
            f"ECE {ece:.4f}</p>",
            "<h2>Folds</h2>", folds.to_html(index=False, border=0), summary.to_html(border=0),
            "<h2>Per class</h2>", per_class.to_html(index=False, border=0),
            *[f"<img src='{n}.png'>" for n in ("confusion_18", "confusion_mask", "confusion_gender", "confusion_age")],
            "<h2>Training curves</h2><img src='curves.png'>",
            "<h2>Calibration</h2><img src='reliability.png'>",
            "<h2>Most confidently wrong</h2><img src='wrong_gallery.png'>",
            "<h2>Label-noise candidates</h2><p>In the label-fixes format: copy rows into a fixes file "
            "(data.label_fixes) after checking the images.</p>", candidates.to_html(index=False, border=0),
            *group_strips(cfg, experiment, out), "</body></html>"]
    index = write_text("\n".join(page), out / "index.html")
    log.info("wrote %s", index)
    return index


STRIP_GROUPS = 3  # groups shown from each end of the confidence order


def group_strips(cfg: Config, experiment: str, out: Path) -> list[str]:
    """The eval person groups of this experiment's submission (if grouping was applied): the least and the most
    confident groups, one strip of thumbnails each, captioned with each image's similarity to its group."""
    paths = Paths.from_config(cfg)
    groups_csv = paths.submissions / f"{experiment.replace('@', '-')}.groups.csv"
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
    plots.image_grid(images, captions, "eval person groups: least (top) and most confident", out / "groups.png",
                     cols=len(labels.IMAGE_STEMS))
    share = groups["grouped"].mean()
    return ["<h2>Person groups (eval)</h2>",
            f"<p>{share:.0%} of the eval images were grouped into persons ({groups_csv.name}); each caption is the "
            "image's thumbnail similarity to its group's unmasked photo (1.00: the anchor itself).</p>",
            "<img src='groups.png'>"]


def compare_experiments(cfg: Config, experiments: list[str]) -> Path:
    paths = Paths.from_config(cfg)
    out = paths.reports / "analysis" / "compare"
    table, errors = [], {}
    for exp in experiments:
        oof, _, _ = read_runs(cfg, exp)
        oof = oof.sort_values("image_path").reset_index(drop=True)
        y, pred = oof["label"].to_numpy(), oof[labels.PROB_COLUMNS].to_numpy().argmax(1)
        table.append({"experiment": exp, "oof_macro_f1": round(macro_f1(y, pred), 4),
                      **{f"f1_{c}": round(v, 3) for c, v in enumerate(f1_per_class(y, pred, 18))}})
        errors[exp] = (pred != y).astype(float)
    table = pd.DataFrame(table)
    corr = pd.DataFrame(errors).corr().round(3)
    write_csv(table, out / "experiments.csv")
    page = ["<html><body><h1>Experiments side by side</h1>", table.to_html(index=False, border=0),
            "<h2>Correlation of errors (lower: better ensemble partners)</h2>", corr.to_html(border=0), "</body></html>"]
    return write_text("\n".join(page), out / "index.html")


def _crop_paths(cfg: Config) -> dict[str, str]:
    from .crop import crop_dir

    records = crop_dir(cfg) / "records.csv"
    if not records.exists():
        return {}
    df = pd.read_csv(records)
    return dict(zip(df["image_path"], df["crop_path"]))


def _thumb(path: str) -> np.ndarray:
    img = cv2.imread(path)
    if img is None:
        return np.zeros((128, 96, 3), np.uint8)
    return cv2.cvtColor(cv2.resize(img, (96, 128)), cv2.COLOR_BGR2RGB)


def analyze(cfg: Config) -> list[Path]:
    experiments = cfg["ensemble"]["experiments"] or [cfg["experiment"]]
    pages = [analyze_experiment(cfg, e) for e in experiments]
    if len(experiments) > 1:
        pages.append(compare_experiments(cfg, experiments))
    pages.append(runs_index(cfg))
    return pages


def _submission_scores(paths: Paths) -> dict[str, list[dict]]:
    """Each run's submissions: file, nested CV, and the eval score where eval answers exist."""
    truth = (pd.read_csv(paths.eval_answers, dtype={"ImageID": str}).set_index("ImageID")["ans"]
             if paths.eval_answers.exists() else None)
    by_run: dict[str, list[dict]] = {}
    for sidecar in sorted(paths.submissions.glob("*.json")):
        summary = json.loads(sidecar.read_text()).get("summary")
        csv = sidecar.with_suffix(".csv")
        if not summary or not csv.exists():
            continue
        row = {"submission": csv, "cv": summary["cv_macro_f1"], "eval": None}
        if truth is not None:
            sub = pd.read_csv(csv, dtype={"ImageID": str})
            if set(sub["ImageID"]) <= set(truth.index):
                row["eval"] = macro_f1(truth.loc[sub["ImageID"]].to_numpy(), sub["ans"].to_numpy())
        for label in summary["runs"]:
            by_run.setdefault(label, []).append(row)
    return by_run


def runs_index(cfg: Config) -> Path:
    """reports/index.html: every run of every experiment with its OOF score, submissions (nested CV, eval score when
    answers exist), date and links — the leaderboard of your own runs."""
    paths = Paths.from_config(cfg)
    subs = _submission_scores(paths)
    rows = []
    for ref in list_runs(paths):
        if not ref.trained_folds():
            continue
        oof = read_oof(ref, tta=True)
        page = paths.reports / "analysis" / ref.experiment / "index.html"
        link = f"<a href='{page.as_uri()}'>analysis</a>" if page.exists() else ""
        for sub in subs.get(ref.label) or [None]:
            rows.append({"experiment": ref.experiment, "run": ref.run_id, "created": run_info(ref).get("created", ""),
                         "folds": len(ref.trained_folds()),
                         "OOF macro F1": round(macro_f1(oof["label"].to_numpy(), oof[labels.PROB_COLUMNS].to_numpy().argmax(1)), 4),
                         "submission": f"<a href='{sub['submission'].as_uri()}'>{sub['submission'].name}</a>" if sub else "",
                         "CV (nested)": round(sub["cv"], 4) if sub else None,
                         "eval macro F1": round(sub["eval"], 4) if sub and sub["eval"] is not None else None,
                         "pages": link})
    table = pd.DataFrame(rows).sort_values("created", ascending=False) if rows else pd.DataFrame()
    body = table.to_html(index=False, border=0, escape=False, na_rep="") if rows else "<p>No trained run yet.</p>"
    page = [f"<html><head><meta charset='utf-8'><title>maskcomp runs</title><style>{STYLE}</style></head><body>",
            "<h1>Your runs</h1><p class='meta'>Every trained run under " + html.escape(str(paths.runs)) +
            ", newest first; OOF macro F1 is the folds' TTA OOF argmax, CV (nested) the submission's honest estimate.</p>",
            body, "</body></html>"]
    return write_text("\n".join(page), paths.reports / "index.html")


WEAKEST = 3


def closing_summary(cfg: Config, pages: list[Path]) -> str:
    """What `make all` produced, in a few lines: submission, CV (nested), eval score when answers exist, the report
    pages and the weakest classes of the OOF predictions."""
    paths = Paths.from_config(cfg)
    name = cfg["ensemble"]["name"] or "+".join(e.replace("@", "-") for e in (cfg["ensemble"]["experiments"] or [cfg["experiment"]]))
    submission = paths.submissions / f"{name}.csv"
    lines = ["", "== summary"]
    if submission.exists():
        side = json.loads(submission.with_suffix(".json").read_text())
        lines.append(f"submission: {submission} (CV macro F1, nested: {side['cv_macro_f1']:.4f})")
        if paths.eval_answers.exists():
            sub = pd.read_csv(submission, dtype={"ImageID": str})
            truth = pd.read_csv(paths.eval_answers, dtype={"ImageID": str}).set_index("ImageID")["ans"]
            lines.append(f"eval macro F1 against {paths.eval_answers.name}: {macro_f1(truth.loc[sub['ImageID']].to_numpy(), sub['ans'].to_numpy()):.4f}")
    else:
        lines.append(f"submission: none yet at {submission} (run `make ensemble`)")
    lines += [f"report: {page}" for page in pages]
    per_class = pd.read_csv(pages[0].parent / "per_class.csv").sort_values("f1")
    weak = per_class[per_class["support"] > 0].head(WEAKEST)
    lines.append("weakest classes (OOF F1): " + ", ".join(f"{r.name} {r.f1:.2f}" for r in weak.itertuples()))
    return "\n".join(lines)
