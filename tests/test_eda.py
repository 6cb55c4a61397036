from maskcomp.analyze.eda import run_eda

from conftest import config_for

PLOTS = ("class_counts", "mask", "gender", "age_group", "age_hist", "gender_age", "image_sizes")
PHOTOS = ("samples_per_class", "eval_samples")  # JPEG


def test_eda_writes_plots_and_summary(sample_root, tmp_path):
    cfg = config_for(sample_root, tmp_path)
    index = run_eda(cfg)
    out = cfg.paths.resolved.reports / "eda"
    assert index == out / "index.html"
    for name in PLOTS:
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    text = (out / "summary.md").read_text()
    assert "persons: 40; train images: 280" in text and "| 17 | not_wear/female/>=60 |" in text
    page = index.read_text()
    assert "persons: 40; train images: 280" in page
    for name in PHOTOS:
        assert (out / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff" and f"<img src='{name}.jpg'" in page
    for name in PLOTS:  # the page shows the plots, not their file names
        assert f"<img src='{name}.png'" in page and "![" in text
    assert "Persons (not images) by gender and age group" in page and "Eval set: random images" in page
