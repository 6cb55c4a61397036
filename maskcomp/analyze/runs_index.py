"""reports/index.html, the leaderboard of your own runs: one row per run, best first, with its OOF score, its
best submission (the stamped copy named beside it, not as another run), the nested CV and eval score, and the
settings it changed against its experiment's reference run (the experiment's best)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..core import labels
from ..core.cli import make_command
from ..core.config import Settings, settings_from
from ..core.errors import MaskcompError
from ..core.metrics import macro_f1
from ..core.paths import Paths
from ..core.settings import identity_keys, value_of
from ..report import htmlpage
from ..runs import RunRef, list_runs, read_failure, read_oof, run_info


@dataclass
class Submitted:
    """One written submission: its file and the stamped copies written with it (same sidecar)."""

    files: list[Path]
    cv: float | None
    eval: float | None
    runs: list[str] = field(default_factory=list)


def _eval_truth(paths: Paths) -> pd.Series | None:
    if not paths.eval_answers.exists():
        return None
    return pd.read_csv(paths.eval_answers, dtype={"ImageID": str}).set_index("ImageID")["ans"]


def submissions(paths: Paths) -> list[Submitted]:
    """Every submission with a sidecar; files written together (a submission and its stamped copy share one
    sidecar: same time, same CV) are one entry, the unstamped name first."""
    truth, groups = _eval_truth(paths), {}
    for sidecar in sorted(paths.submissions.glob("*.json")):
        summary = json.loads(sidecar.read_text()).get("summary")
        csv = sidecar.with_suffix(".csv")
        if not summary or not csv.exists():
            continue
        key = (summary.get("written"), summary["cv_macro_f1"], tuple(summary["runs"]))
        entry = groups.setdefault(key, Submitted([], summary["cv_macro_f1"], None, list(summary["runs"])))
        entry.files.append(csv)
        if truth is not None and entry.eval is None:
            sub = pd.read_csv(csv, dtype={"ImageID": str})
            if set(sub["ImageID"]) <= set(truth.index):
                entry.eval = macro_f1(truth.loc[sub["ImageID"]].to_numpy(), sub["ans"].to_numpy())
    for entry in groups.values():
        entry.files.sort(key=lambda p: (len(p.stem), p.name))
    return list(groups.values())


def stored_settings(ref: RunRef) -> dict | None:
    """The run's training-identity settings from its config.yaml, or None when it cannot be read."""
    try:
        cfg = settings_from({**yaml.safe_load(ref.config.read_text()), "paths": {}}, str(ref.config))
    except (OSError, yaml.YAMLError, MaskcompError, TypeError):
        return None
    return {key: value_of(cfg, key) for key in identity_keys("train")}


def changed(settings: dict | None, reference: dict | None) -> str:
    if settings is None or reference is None:
        return "?"
    diffs = [f"{k}={_short(v)} (ref {_short(reference[k])})" for k, v in settings.items() if v != reference[k]]
    return "; ".join(diffs) or "same settings (other data, labels or folds)"


def _short(value) -> str:
    """A setting's value as a person reads it: floats to 4 significant digits (a sampled lr of 0.002582211501745744
    reads 0.002582), lists and mappings compact."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ",".join(map(_short, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_short(v)}" for k, v in value.items()) + "}"
    return str(value)


PAGE_RUN = "page.json"  # beside an analysis page: which run it shows (the index links a run only to its own page)


def analysis_page(ref: RunRef, paths: Paths) -> Path | None:
    """The analysis page that shows this run (a page is per experiment and shows the run analysed last), or None."""
    analysis = paths.reports / "analysis"
    for folder in (analysis / f"{ref.experiment}-{ref.run_id}", analysis / ref.experiment):
        try:
            shown = json.loads((folder / PAGE_RUN).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if shown.get("run") == ref.run_id and (folder / "index.html").exists():
            return folder / "index.html"
    return None


def analyze_hint(ref: RunRef) -> str:
    return make_command("analyze", [f"experiment={ref.experiment}", f"run={ref.run_id}"])


def _run_row(ref: RunRef, paths: Paths, subs: list[Submitted]) -> dict:
    oof = read_oof(ref, paths, tta=True)
    best = max(subs, key=lambda s: s.cv if s.cv is not None else -1, default=None)
    page = analysis_page(ref, paths)
    files = [htmlpage.link(f, paths.reports, f.name) for f in best.files] if best else []
    return {
        "experiment": ref.experiment,
        "run": ref.run_id,
        "created": run_info(ref).get("created", ""),
        "folds": len(ref.trained_folds()),
        "OOF macro F1": round(macro_f1(oof["label"].to_numpy(), oof[labels.PROB_COLUMNS].to_numpy().argmax(1)), 4),
        "submission": files[0] + (f" (copy: {', '.join(files[1:])})" if files[1:] else "") if files else "",
        "CV (nested)": round(best.cv, 4) if best and best.cv is not None else None,
        "eval macro F1": round(best.eval, 4) if best and best.eval is not None else None,
        "pages": htmlpage.link(page, paths.reports, "analysis") if page else f"not analysed: {analyze_hint(ref)}",
        "note": f"{len(subs)} submissions; the best by CV shown" if len(subs) > 1 else "",
    }


def _unfinished_run_row(ref: RunRef) -> dict:
    """A run folder whose training never finished a fold: listed as such, with the error that stopped it."""
    failure = read_failure(ref)
    return {
        "experiment": ref.experiment,
        "run": ref.run_id,
        "created": run_info(ref).get("created", ""),
        "folds": 0,
        "note": html.escape(f"no finished fold; training stopped at {failure}" if failure else "no finished fold"),
    }


def with_changes(table: pd.DataFrame, refs: dict[str, RunRef]) -> pd.DataFrame:
    """The 'changed vs reference' column: per experiment, each run's settings against its best run's."""
    table = table.copy()
    table["changed vs reference"] = ""
    for _, rows in table.groupby("experiment"):
        ranked = rows.sort_values(["CV (nested)", "OOF macro F1"], ascending=False, na_position="last")
        reference_id = ranked.iloc[0]["run"]
        reference = stored_settings(refs[reference_id])
        for i, row in rows.iterrows():
            table.loc[i, "changed vs reference"] = (
                "reference (the experiment's best)"
                if row["run"] == reference_id
                else html.escape(changed(stored_settings(refs[row["run"]]), reference))
            )
    return table


def runs_index(cfg: Settings) -> Path:
    """reports/index.html: every run of every experiment, best first (nested CV, then OOF), unfinished ones last."""
    paths = cfg.paths.resolved
    subs, rows, refs = submissions(paths), [], {}
    for ref in list_runs(paths):
        refs[ref.run_id] = ref
        mine = [s for s in subs if ref.label in s.runs]
        rows.append(_run_row(ref, paths, mine) if ref.trained_folds() else _unfinished_run_row(ref))
    if rows:
        table = with_changes(pd.DataFrame(rows), refs)
        table = table.sort_values(["CV (nested)", "OOF macro F1", "created"], ascending=False, na_position="last")
        body = htmlpage.table(table, escape=False)
    else:
        body = "<p>No trained run yet.</p>"
    reports = [
        htmlpage.link(p, paths.reports, name)
        for name, p in (
            ("EDA", paths.reports / "eda" / "index.html"),
            ("crop report", paths.reports / "crop" / "index.html"),
        )
        if p.exists()
    ]
    meta = [
        f"Every trained run under {html.escape(str(paths.models))}, best first; OOF macro F1 is the folds' TTA OOF "
        "argmax, CV (nested) the submission's honest estimate; 'changed vs reference' lists the training settings "
        "that differ from the experiment's best run.",
        "Reports: " + (" · ".join(reports) or "none yet"),
    ]
    return htmlpage.render("Your runs", meta, [htmlpage.Section("Runs", [body])], paths.reports / "index.html")
