"""The whole pipeline on generated data: it must learn (macro F1 well above chance against hidden answers),
and the analysis must point at label errors planted in train.csv."""

import html
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from maskcomp.analyze.eda import run_eda
from maskcomp.analyze.noise import CANDIDATE_COLUMNS, MEASURED_PRECISION, relabel
from maskcomp.analyze.pages import analyze, closing_summary
from maskcomp.core.config import load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.data.label_fixes import read_label_fixes
from maskcomp.data.sample import make_sample
from maskcomp.data.tables import load_train
from maskcomp.ensemble.names import submission_file
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.report.crop_page import write_crop_report
from maskcomp.train.trainer import train

from conftest import config_for, fold_dir
from pagecheck import broken_references, browser, images_broken_in_browser

pytestmark = pytest.mark.slow  # trains or runs whole stages

PLANTED_GENDER_FLIPS = 5


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    root = work / "data"
    make_sample(load_config(None, [f"paths.data_root={root}"]).paths.resolved, 70, 12, seed=11)
    persons = pd.read_csv(root / "train" / "train.csv", dtype=str)
    planted = np.random.default_rng(5).choice(len(persons), PLANTED_GENDER_FLIPS, replace=False)
    persons.loc[planted, "gender"] = persons.loc[planted, "gender"].map({"male": "female", "female": "male"})
    persons.to_csv(root / "train" / "train.csv", index=False)
    # grouping off here: with 12 eval persons a pooled decision moves the eval score by whole persons, and this
    # test is about the pipeline learning; test_person_grouping_in_the_ensemble covers grouping
    cfg = config_for(
        root,
        work,
        "crop.mode=center",
        "train.img_size=[80, 60]",
        "train.epochs=10",  # at 6 the planted flips rank 1, 7, 8, 13, 14 of 16 gender candidates on this machine
        "train.workers=0",
        "train.batch_size=24",
        "folds.k=3",
        "infer.person_grouping=off",
        "train.threads=2",  # the candidates' ranks must not depend on how busy the machine is (threads change sums)
    )
    write_crop_report(cfg, crop_faces(cfg), 1.0)
    make_folds(cfg)
    train(cfg)
    infer(cfg)
    submission = ensemble(cfg)
    return cfg, root, submission, set(persons.loc[planted, "id"])


def test_pipeline_learns_on_generated_data(pipeline):
    cfg, root, submission, _ = pipeline
    sub = pd.read_csv(submission)
    truth = pd.read_csv(root / "eval_answers.csv").set_index("ImageID").loc[sub["ImageID"], "ans"]
    score = f1_score(truth, sub["ans"], average="macro")
    assert score > 0.5, f"eval macro F1 {score:.3f}: the pipeline did not learn"
    info = pd.read_csv(root / "eval" / "info.csv")
    assert sub["ImageID"].tolist() == info["ImageID"].tolist()
    side = json.loads(submission.with_suffix(".json").read_text())
    assert len(side["biases"]) == 18 and side["nested_bias_gain"] is not None
    # the mask status is easy on generated data: the submission keeps the eval set's 5:1:1 image mix
    mask_share = np.bincount(sub["ans"] // 6, minlength=3) / len(sub)
    assert np.allclose(mask_share, [5 / 7, 1 / 7, 1 / 7], atol=0.05), mask_share
    # the CV it reports is the nested one: applied biases' held-out gain, or the plain OOF score without them
    nested = side["nested_bias_gain"]
    expected = nested["pooled_after"] if side["biases_applied"] else side["oof_before_decision"]["f1"]
    assert side["cv_macro_f1"] == pytest.approx(expected)


def test_analysis_report_from_run_files(pipeline):
    cfg, _, _, _ = pipeline
    index = analyze(cfg)[0]
    out = index.parent
    for name in (
        "confusion_18",
        "confusion_mask",
        "confusion_gender",
        "confusion_age",
        "curves",
        "reliability",
    ):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name  # plots: PNG
    assert (out / "wrong_gallery.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # photos: JPEG
    per_class = pd.read_csv(out / "per_class.csv")
    oof_rows = sum(len(pd.read_csv(p)) for p in fold_dir(cfg, 0).parent.glob("fold*/oof_tta.csv"))
    assert per_class["support"].sum() == oof_rows == 70 * 7
    whole = pd.read_csv(fold_dir(cfg, 0).parent / "oof.csv")
    assert len(whole) == oof_rows and whole["image_path"].str.startswith("train/images/").all()
    candidates = pd.read_csv(out / "label_fix_candidates.csv", keep_default_na=False)
    assert list(candidates.columns) == CANDIDATE_COLUMNS
    assert "OOF macro F1" in index.read_text()
    weakest = per_class[per_class["support"] > 0].sort_values("f1").iloc[0]
    page = index.read_text()
    assert (
        "Where the score is lost" in page
        and f"<b>{html.escape(weakest['name'])}</b> (class {weakest['class']})" in page
    )
    # what to try comes from this run: its nested CV and eval score, its age errors by true age, its decision steps,
    # and levers it does not use (sample.yaml: no oversampling, no soft-F1 term, the 3-way age head)
    side = json.loads(submission_file(cfg).with_suffix(".json").read_text())
    assert f"nested CV {side['cv_macro_f1']:.4f}; eval macro F1 0." in page
    assert "Age group wrong, by true age" in page and "per-class biases" in page  # grouping is off here
    assert "&gt;=60 is found in" in page and "a soft-F1 loss term" in page
    summary = closing_summary(cfg, [index]).splitlines()
    assert summary[2].startswith(
        f"submission: {cfg.paths.resolved.submissions / 'sample.csv'} (CV macro F1, nested: 0."
    )
    assert summary[3].startswith("eval macro F1 against eval_answers.csv: ") and summary[4] == f"report: {index}"
    assert summary[5].startswith("weakest classes (OOF F1): ") and summary[5].count("/") == 2 * 3
    runs_page = (cfg.paths.resolved.reports / "index.html").read_text()
    run = fold_dir(cfg, 0).parent.name
    assert f">{run}</td>" in runs_page and "sample.csv</a>" in runs_page and "eval macro F1" in runs_page


def test_planted_gender_flips_rank_near_the_top_of_candidates(pipeline):
    cfg, _, _, planted = pipeline
    analyze(cfg)
    out = cfg.paths.resolved.reports / "analysis" / "sample"
    candidates = pd.read_csv(out / "label_fix_candidates.csv", dtype=str, keep_default_na=False)
    top = candidates[candidates["fix"] == "gender"]["person_id"].head(2 * PLANTED_GENDER_FLIPS).tolist()
    found = planted & set(top)
    assert len(found) >= PLANTED_GENDER_FLIPS - 1, f"planted {sorted(planted)}, top gender candidates {top}"


def test_relabel_writes_fixes_that_the_loader_applies(pipeline, monkeypatch):
    """The loop's mechanics (which candidates are right is tested on planted OOF tables in test_noise.py): the
    automatic fixes file is in the label-fixes format and load_train applies exactly those fixes. Gender fixes are
    automatic here as if planted errors had measured them precise (they did not: test_noise.py)."""
    cfg, _, _, _ = pipeline
    monkeypatch.setitem(MEASURED_PRECISION, "gender", (1.0, "as if measured"))
    # 5 flips among 70 persons (the prior says so), and the sample's small model is never 80 % sure: the bar is set
    # at the most confident applicable candidate, so that the mechanics are exercised whatever the model's numbers
    cfg = updated(cfg, {"relabel.prior": PLANTED_GENDER_FLIPS / 70})
    listed = pd.read_csv(relabel(cfg).candidates, keep_default_na=False)
    applicable = listed[listed["fix"].isin(cfg.relabel.auto_kinds) & (listed["systematic"].astype(str) != "True")]
    cfg = updated(cfg, {"relabel.auto_min_confidence": float(applicable["confidence"].max())})
    result = relabel(cfg)
    fixes = read_label_fixes(result.fixes)
    candidates = pd.read_csv(result.candidates, dtype={"person_id": str}, keep_default_na=False)
    assert len(fixes) == result.automatic == candidates["auto"].sum() > 0
    assert set(fixes["fix"]) <= {"gender", "swap_incorrect_normal"}
    images = load_train(Context(updated(cfg, {"data.label_fixes": [str(result.fixes)]})))
    before = load_train(Context(cfg)).drop_duplicates("person_id").set_index("person_id")["gender"]
    after = images.drop_duplicates("person_id").set_index("person_id")["gender"]
    assert set(after.index[after != before]) == set(fixes.loc[fixes["fix"] == "gender", "person_id"])


@pytest.fixture(scope="module")
def report_pages(pipeline) -> list:
    """Every report page of the trained pipeline (EDA, crops, analysis, runs), written once for the tests that only
    read them."""
    cfg = pipeline[0]
    run_eda(cfg)
    analyze(cfg)
    return sorted(cfg.paths.resolved.reports.rglob("index.html"))


def test_report_pages_have_no_broken_links_or_images(pipeline, report_pages):
    cfg, _, _, _ = pipeline
    pages = report_pages
    reports = cfg.paths.resolved.reports
    assert {str(p.relative_to(reports)) for p in pages} >= {
        "index.html",
        "eda/index.html",
        "crop/index.html",
        "analysis/sample/index.html",
    }
    for page in pages:
        assert broken_references(page) == [], page
    analysis = (reports / "analysis" / "sample" / "index.html").read_text()
    assert "<nav>Contents:" in analysis and "href='../../eda/index.html'" in analysis and "label_noise.jpg" in analysis
    assert "href='../../../submissions/sample.csv'>submission</a>" in analysis


def test_link_check_finds_a_missing_image_and_a_dead_anchor(tmp_path):
    page = tmp_path / "index.html"
    (tmp_path / "ok.png").write_bytes(b"\x89PNG")
    page.write_text(
        "<html><body><h2 id='a'>A</h2><a href='#a'>a</a><a href='#b'>b</a><img src='ok.png'><img src='gone.png'>"
        f"<a href='{(tmp_path / 'ok.png').as_uri()}'>abs</a></body></html>"
    )
    broken = broken_references(page)
    assert len(broken) == 3 and "#b" in broken[0] and "gone.png" in broken[1] and "absolute" in broken[2]


def test_report_pages_render_in_a_browser(report_pages):
    exe = browser()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium) to render the report pages")
    for page in report_pages:
        assert images_broken_in_browser(page, exe) == [], page


def test_browser_check_sees_an_image_that_does_not_decode(tmp_path):
    exe = browser()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    page = tmp_path / "index.html"
    page.write_text("<html><body><img src='bad.png'></body></html>")
    assert images_broken_in_browser(page, exe) == ["bad.png"]


def test_two_experiments_with_fitted_weights_and_head_biases_and_one_model_per_head(pipeline):
    cfg, root, single, _ = pipeline
    other = updated(cfg, {"experiment": "sample_b", "seed": 7, "train.epochs": 1})  # its quality is not tested
    train(other)
    infer(other)
    pair = updated(
        cfg,
        {
            "ensemble.experiments": ["sample", "sample_b"],
            "ensemble.weights": "fit",
            "ensemble.bias_mode": "head",
            "ensemble.name": "pair",
        },
    )
    sub = ensemble(pair)
    side = json.loads(sub.with_suffix(".json").read_text())
    assert side["experiments"] == ["sample", "sample_b"] and len(side["summary"]["runs"]) == 2
    assert len(side["weights"]) == 2 and sum(side["weights"]) == pytest.approx(1) and min(side["weights"]) >= 0
    assert "optimistic" in side["weights_note"], "fitted weights are not nested: the sidecar must say so"
    # per-head biases: 3 mask + 2 gender + 3 age values spread over the 18 classes
    biases = np.array(side["biases"]).reshape(3, 2, 3)  # [mask, gender, age]
    additive = biases[:, :1, :1] + biases[:1, :, :1] + biases[:1, :1, :] - 2 * biases[0, 0, 0]
    assert np.allclose(biases, additive, atol=3e-3), "head biases must add up per head, not vary per class"
    info = pd.read_csv(root / "eval" / "info.csv")
    assert pd.read_csv(sub)["ImageID"].tolist() == info["ImageID"].tolist()

    per_head = ensemble(updated(cfg, {"ensemble.heads": {"mask": "sample", "gender": "sample_b", "age": "sample"}}))
    side = json.loads(per_head.with_suffix(".json").read_text())
    assert per_head.name == "mask-sample+gender-sample_b+age-sample.csv"
    runs = dict(zip(side["experiments"], side["summary"]["runs"]))
    assert side["heads"] == {"mask": runs["sample"], "gender": runs["sample_b"], "age": runs["sample"]}
    assert side["weights"] == [1.0] and pd.read_csv(per_head)["ImageID"].tolist() == info["ImageID"].tolist()


def test_missing_checkpoint_is_one_line(pipeline):
    cfg, _, _, _ = pipeline
    best = fold_dir(cfg, 1) / "best.pt"
    best.rename(best.with_suffix(".bak"))
    try:
        with pytest.raises(MaskcompError, match=r"fold1/best.pt: missing fold checkpoint"):
            infer(cfg, folds=[1])
    finally:
        best.with_suffix(".bak").rename(best)


def test_analysis_of_missing_run_lists_it(pipeline, tmp_path):
    cfg, _, _, _ = pipeline
    with pytest.raises(MaskcompError, match="no trained run of experiment 'nothing'"):
        analyze(updated(cfg, {"experiment": "nothing"}))


def test_person_grouping_in_the_ensemble(pipeline):
    cfg, root, _, _ = pipeline
    auto = ensemble(updated(cfg, {"infer.person_grouping": "auto", "ensemble.name": "auto"}))
    side = json.loads(auto.with_suffix(".json").read_text())["person_grouping"]
    assert side["mode"] == "auto" and len(side["per_fold"]) == 3
    assert all(f["purity"] > 0.95 and f["completeness"] > 0.9 for f in side["per_fold"]), side["per_fold"]
    assert side["applied"] == (side["nested_gain"] > 0)
    # the last test of this module: it replaces the experiment's submission with a grouped one
    forced = updated(cfg, {"infer.person_grouping": True})
    out = ensemble(forced)
    groups = pd.read_csv(out.with_name("sample.groups.csv"), dtype={"ImageID": str, "group": str})
    assert groups["ImageID"].tolist() == pd.read_csv(out, dtype=str)["ImageID"].tolist()
    answers = pd.read_csv(root / "eval_answers.csv", dtype=str).set_index("ImageID")
    persons = answers.loc[groups["ImageID"], "person_id"].to_numpy()
    # every group holds one person's images only
    assert (pd.Series(persons).groupby(groups["group"].to_numpy()).nunique() == 1).all()
    assert groups["grouped"].mean() > 0.8
    page = analyze(cfg)[0]
    assert (page.parent / "groups.jpg").exists() and "Person groups (eval)" in page.read_text()
    # a named submission: the analysis page links it and shows its groups (they were left out before)
    named = updated(forced, {"ensemble.name": "named"})
    ensemble(named)
    (page.parent / "groups.jpg").unlink()
    text = analyze(named)[0].read_text()
    assert "submissions/named.csv'>submission</a>" in text and "named.groups.csv</a>" in text
    assert (page.parent / "groups.jpg").exists() and "Person groups (eval)" in text
