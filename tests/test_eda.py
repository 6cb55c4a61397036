from maskcomp.eda import run_eda
from maskcomp.paths import Paths

from conftest import config_for

PLOTS = ("class_counts", "mask", "gender", "age_group", "age_hist", "gender_age", "image_sizes", "samples_per_class")


def test_eda_writes_plots_and_summary(sample_root, tmp_path):
    cfg = config_for(sample_root, tmp_path)
    summary = run_eda(cfg)
    out = Paths.from_config(cfg).reports / "eda"
    for name in PLOTS:
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    text = summary.read_text()
    assert "persons: 40; train images: 280" in text and "| 17 |" in text
