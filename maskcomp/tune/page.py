"""What a study leaves: reports/tune/<study>/index.html (optimisation history, fold-by-fold values, parameter
importances, parallel coordinates, a table of trials linking their runs) and configs/tune/<study>_best.yaml, a
config to train with."""

from __future__ import annotations

import html
import logging
import os
import shlex
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from ..core.cli import make_command  # noqa: E402
from ..core.config import nested_value, parse_override  # noqa: E402
from ..core.fileio import write_text  # noqa: E402
from ..report import htmlpage  # noqa: E402
from .space import search_space  # noqa: E402
from .study import TuneJob, _safe_url  # noqa: E402

log = logging.getLogger(__name__)

PLOTS = {
    "history": ("Optimisation history", optuna.visualization.matplotlib.plot_optimization_history),
    # each trial's running fold mean after each fold: where the pruner stopped it, and how far apart folds are
    "intermediate": ("Fold by fold", optuna.visualization.matplotlib.plot_intermediate_values),
    "importances": ("Parameter importances", optuna.visualization.matplotlib.plot_param_importances),
    "parallel": ("Parallel coordinates", optuna.visualization.matplotlib.plot_parallel_coordinate),
}

FIGURE_INCHES = {"parallel": (13, 6)}  # one axis per searched setting: they need the width to be read


def trials_table(study: optuna.Study, job: TuneJob, out: Path) -> pd.DataFrame:
    """One row per trial (over-budget placeholders left out), best first, with a link to its run."""
    paths = job.cfg.paths.resolved
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("over_budget"):
            continue
        exp, run_id = t.user_attrs.get("experiment", ""), t.user_attrs.get("run_id", "")
        run_dir = paths.models / exp / run_id
        page = paths.reports / "analysis" / f"{exp}-{run_id}" / "index.html"
        target = page if page.exists() else run_dir / "config.yaml"
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                # a pruned trial's stored value is its last fold mean, not a CV
                "CV": round(t.value, 4) if t.state == TrialState.COMPLETE else None,
                "fold mean": round(max(t.intermediate_values.items())[1], 4) if t.intermediate_values else None,
                "folds": t.user_attrs.get("folds_done", 0),
                "trained": t.user_attrs.get("folds_trained", 0),
                "train s": t.user_attrs.get("train_s"),
                **{k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in t.params.items()},
                "run": htmlpage.link(target, out, run_id) if run_id else "",
            }
        )
    table = pd.DataFrame(rows)
    return table.sort_values(["CV", "fold mean"], ascending=False, na_position="last") if rows else table


def draw_plots(study: optuna.Study, out: Path) -> list[htmlpage.Section]:
    """Optuna's matplotlib views; one that cannot be drawn yet (e.g. importances of fewer than 2 finished trials)
    says why instead."""
    sections = []
    for name, (title, plot) in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(*FIGURE_INCHES.get(name, (9, 5)))
            fig.tight_layout()
            out.mkdir(parents=True, exist_ok=True)
            fig.savefig(out / f"{name}.png", dpi=110)
            plt.close(fig)
            sections.append(htmlpage.Section(title, [htmlpage.image(f"{name}.png", title)]))
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            sections.append(htmlpage.Section(title, [f"<p>Not drawn: {err}</p>"]))
    return sections


FEW_TRIALS = 20  # below this many finished trials, importances rest on too few points to rank settings


def train_command(best: Path) -> str:
    """The command that trains the best trial's config (every trial's ARGS are in the file; DATA as invoked)."""
    return make_command("train", config=str(best), keep_args=False)


def dashboard_command(job: TuneJob) -> str:
    """The make line that opens this study in optuna-dashboard (with the data folder the search used)."""
    data = job.cfg.paths.data_root
    return f"make tune-dashboard TUNE={shlex.quote(str(job.tune_file))} DATA={shlex.quote(str(data))}"


def write_study_page(study: optuna.Study, job: TuneJob, best: Path | None = None) -> Path:
    out = job.cfg.paths.resolved.reports / "tune" / job.study
    table = trials_table(study, job, out)
    states = table["state"].value_counts().to_dict() if len(table) else {}
    finished = states.get("complete", 0)
    meta = [
        f"Storage {_safe_url(job.storage)}; search file {job.tune_file}; "
        + ", ".join(f"{n} {s}" for s, n in states.items()),
        "Value: the CV macro F1 the submission would report (nested decision on the run's OOF); fold mean: the "
        "running mean of the folds' best macro F1, what the pruner compares.",
    ]
    meta.append(f"Live view while workers run: <code>{html.escape(dashboard_command(job))}</code> (optuna-dashboard "
                "on this study's storage, 127.0.0.1)")  # fmt: skip
    if best is not None:
        meta.append(f"Best config: <code>{best}</code>; train it with <code>{html.escape(train_command(best))}</code>")
    sections = [htmlpage.Section("Trials", [htmlpage.table(table, escape=False)]), *draw_plots(study, out)]
    if finished < FEW_TRIALS:
        for section in sections:
            if section.title == "Parameter importances":
                section.body.insert(0, f"<p>From {finished} finished trial(s): with fewer than {FEW_TRIALS}, "
                                    "importances are noise as often as signal; read them as a hint.</p>")  # fmt: skip
    return htmlpage.render(f"Tuning: {job.study}", meta, sections, out / "index.html")


def _deep_merge(into: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def best_config(study: optuna.Study, job: TuneJob) -> Path | None:
    """configs/tune/<study>_best.yaml: the search file, the ARGS every trial had, and the best trial's settings."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    best = max(done, key=lambda t: t.value)
    path = job.tune_file.parent / f"{job.study}_best.yaml"
    values: dict = {"base": os.path.relpath(job.tune_file.resolve(), path.parent.resolve())}
    for text in job.overrides:
        if not text.startswith("tune."):
            _deep_merge(values, parse_override(text))
    dims = {d.key: d for d in search_space(job.cfg)}  # the stored parameters back into the settings' values
    for key, raw in best.params.items():
        _deep_merge(values, nested_value(key, dims[key].value(raw) if key in dims else raw))
    head = (
        f"# Best trial of study {job.study}: trial {best.number}, CV {best.value:.4f}, run "
        f"{best.user_attrs.get('experiment')}/{best.user_attrs.get('run_id')}.\n"
        f"# make train CONFIG={path} reuses that run (the same settings give the same run id).\n"
    )
    return write_text(head + yaml.safe_dump(values, sort_keys=False), path)
