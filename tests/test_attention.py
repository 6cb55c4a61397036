"""Where the model looks: the face share measured on Grad-CAM maps, the greyed-background check, maps for a convnet
and a transformer, computed once per content, and the page's warning."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskcomp.analyze import attention
from maskcomp.analyze.attention import attention_report, attention_sections, face_share, greyed
from maskcomp.core import labels
from maskcomp.core.config import load_config
from maskcomp.crop.boxes import face_box_in_input
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.predict.infer import infer
from maskcomp.runs import read_oof, resolve_run
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for


def test_face_share_is_the_maps_mass_inside_the_box():
    cam = np.zeros((8, 6))
    cam[2:6, 1:5] = 1.0  # 16 cells inside the box (x 1..5, y 2..6)
    assert face_share(cam, (1, 2, 5, 6)) == 1.0
    cam[0, 0] = 16.0
    assert face_share(cam, (1, 2, 5, 6)) == 0.5
    assert np.isnan(face_share(np.zeros((8, 6)), (1, 2, 5, 6)))


def test_the_face_box_is_mapped_from_image_pixels_into_the_input():
    record = pd.Series({"x1": 100, "y1": 50, "x2": 300, "y2": 450, "face_x1": 150, "face_y1": 150, "face_x2": 250,
                        "face_y2": 350})  # fmt: skip
    # the crop box (200 x 400 pixels) becomes a 36 x 72 input: the face is its middle half in x and y
    assert face_box_in_input(record, (72, 36)) == (9, 18, 27, 54)


def test_greying_keeps_the_face_and_sets_the_rest_to_the_mean():
    batch = torch.ones(2, 3, 8, 6)
    out = greyed(batch, [(1, 2, 5, 6), (0, 0, 6, 8)])
    assert out[0].sum() == 3 * 16 and out[1].equal(batch[1])


class LooksAtCorner(torch.nn.Module):
    """A 'model' whose gender comes from the image's top-left corner alone (background), the mask from the centre."""

    def forward(self, x):
        corner, centre = x[:, 0, :2, :2].mean((1, 2)), x[:, 0, 3:5, 2:4].mean((1, 2))
        zeros = torch.zeros_like(corner)
        return {
            "mask": torch.stack([centre, -centre, zeros], 1),
            "gender": torch.stack([corner, -corner], 1),
            "age": torch.stack([zeros, zeros, zeros], 1),
        }


def test_the_greyed_check_shows_a_head_that_reads_the_background():
    n = 24
    images = torch.randn(n, 3, 8, 6)
    gender = (images[:, 0, :2, :2].mean((1, 2)) < 0).long().numpy()  # what the corner says, as the truth
    mask = (images[:, 0, 3:5, 2:4].mean((1, 2)) < 0).long().numpy()
    box = {"x1": 0, "y1": 0, "x2": 6, "y2": 8, "face_x1": 2, "face_y1": 2, "face_x2": 5, "face_y2": 6}
    rows = pd.DataFrame(
        {"fold": 0, "label": mask * 6 + gender * 3, "source": "mtcnn", "crop_path": [str(i) for i in range(n)], **box}
    )

    class Fixed(attention.Inputs):
        def batch(self, crop_paths):
            return images[[int(p) for p in crop_paths]]

    src = attention.Sources(None, {0: LooksAtCorner()}, rows, Fixed((8, 6), (0, 0, 0), (1, 1, 1)))
    result = attention.causal_check(src, per_class=n)
    assert result["gender"]["f1"] == 1.0 and result["gender"]["f1_background_greyed"] < 0.5
    assert result["mask"]["f1"] == result["mask"]["f1_background_greyed"] == 1.0


@pytest.fixture(scope="module")
def detected_crops(tiny_root, tmp_path_factory) -> list[str]:
    """MTCNN crops and folds of the tiny data, made once for every backbone below (crops do not depend on it)."""
    work = tmp_path_factory.mktemp("attention")
    cfg = config_for(tiny_root, work, *TINY_MODEL, "crop.mode=mtcnn")
    crop_faces(cfg)
    make_folds(cfg)
    return [f"paths.crops={work / 'crops'}", f"paths.folds={work / 'folds.csv'}"]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_maps_for_a_convnet_and_a_transformer_computed_once(tiny_root, tmp_path, detected_crops, backbone):
    cfg = config_for(tiny_root, tmp_path, *TINY_MODEL, "crop.mode=mtcnn", "train.epochs=2", "train.lr=0.003",
                     f"model.backbone={backbone}", "attention.per_class=4", "attention.grey_per_class=4",
                     *detected_crops)  # fmt: skip
    train(cfg)
    infer(cfg)
    run = resolve_run(cfg.paths.resolved, "sample")
    out = tmp_path / "page"
    report = attention_report(cfg, run, read_oof(run, cfg.paths.resolved), out)
    assert set(report["heads"]) == set(labels.HEADS) == set(report["causal"])
    for head, r in report["heads"].items():
        assert (out / "attention" / f"attention_{head}.png").exists()
        measured = [c["face_share"] for c in r["classes"] if c["face_share"] is not None]
        assert measured and all(0.0 <= s <= 1.0 for s in measured), (head, r)
        assert 0.0 <= report["causal"][head]["f1_background_greyed"] <= 1.0
    assert report["embedding"]["images"] > 0 and (out / "attention" / "embedding.png").exists()
    stamp = (out / "attention" / "attention.json").stat().st_mtime_ns
    assert attention_report(cfg, run, read_oof(run, cfg.paths.resolved), out) == json.loads(
        (out / "attention" / "attention.json").read_text()
    )
    assert (out / "attention" / "attention.json").stat().st_mtime_ns == stamp, "computed once per content"


def test_the_page_warns_when_a_head_looks_outside_the_face():
    heads = {h: {"classes": [], "face_share": 0.8, "looks_outside": False, "weakest": []} for h in labels.HEADS}
    heads["gender"] = {"classes": [{"class": "male", "face_share": 0.3, "images": 8}], "face_share": 0.3,
                       "looks_outside": True, "weakest": ["male"]}  # fmt: skip
    causal = {h: {"f1": 0.9, "f1_background_greyed": 0.6, "images": 40} for h in labels.HEADS}
    causal["age"]["f1_background_greyed"] = 0.89  # a change within 0.05: the head reads the face
    body = "".join(attention_sections({"heads": heads, "causal": causal}, load_config(None, []).attention)[0].body)
    assert "<b>gender</b> looks mostly outside the face (face share 0.30" in body
    assert "<b>mask</b> looks mostly" not in body and "-0.3" in body
    # the check in words: what each head reads and what that means for the crop
    assert (
        "gender loses 0.300 macro F1 without the background: it reads hair, clothes or background; keep a wide" in body
    )
    assert "age keeps its score without the background (-0.010): it reads the face" in body


class Flat(torch.nn.Module):
    """Features = the image itself; heads of zeros (every image predicted as class 0)."""

    def __init__(self, width: int):
        super().__init__()
        self.backbone = torch.nn.Flatten()
        self.heads = torch.nn.ModuleDict({h: torch.nn.Linear(width, n) for h, n in labels.HEADS.items()})
        for head in self.heads.values():
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)


def test_an_errors_nearest_training_image_is_found_by_the_fold_models_features():
    from maskcomp.analyze.embedding import fold_view

    images = torch.randn(12, 3, 8, 6)
    images[11] = images[0]  # a training image of fold 1 identical to held-out image 0 of fold 0
    rows = pd.DataFrame({"fold": [0] * 6 + [1] * 6, "label": [17] + [0] * 11, "crop_path": [str(i) for i in range(12)],
                         "person_id": [f"p{i}" for i in range(12)]})  # fmt: skip

    class Fixed(attention.Inputs):
        def batch(self, crop_paths):
            return images[[int(p) for p in crop_paths]]

    src = attention.Sources(None, {0: Flat(3 * 8 * 6)}, rows, Fixed((8, 6), (0, 0, 0), (1, 1, 1)))
    view = fold_view(src, 0, rows[rows["fold"] == 0], load_config(None, []).attention)
    assert (view["pred"] != view["label"]).tolist() == [True] + [False] * 5 and view["xy"].shape == (6, 2)
    ((error, pred, near),) = view["errors"]
    assert error["crop_path"] == "0" and pred == 0
    assert near[0][0]["crop_path"] == "11" and near[0][1] == pytest.approx(1.0)
    assert all(other["fold"] == 1 for other, _ in near), "neighbours come from the fold's training images"


def test_the_interactive_map_names_the_point_under_the_pointer(tmp_path, browser):
    """Each point of the plotly map carries its person, image and labels; hovering it in Chromium shows its crop."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    from maskcomp.analyze.embedding import interactive_maps

    images = torch.randn(12, 3, 8, 6)
    rows = pd.DataFrame({"fold": [0] * 6 + [1] * 6, "label": [17] + [0] * 11, "crop_path": [str(i) for i in range(12)],
                         "person_id": [f"p{i:03d}" for i in range(12)], "age": [61] + [20] * 11,
                         "image_path": [f"/d/p{i:03d}/mask1.jpg" for i in range(12)]})  # fmt: skip

    class Fixed(attention.Inputs):
        def batch(self, crop_paths):
            return images[[int(p) for p in crop_paths]]

        def rgb(self, crop_path):
            return np.full((8, 6, 3), 0.5, np.float32)

    from maskcomp.analyze.embedding import fold_view

    src = attention.Sources(None, {0: Flat(3 * 8 * 6)}, rows, Fixed((8, 6), (0, 0, 0), (1, 1, 1)))
    views = {0: fold_view(src, 0, rows[rows["fold"] == 0], load_config(None, []).attention)}
    page = interactive_maps(src, views, tmp_path / "embedding.html")
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000, "plotly.js beside the page: it opens offline"
    text = page.read_text()
    assert '"p000"' in text and '"mask1.jpg"' in text and "jpeg;base64," in text

    browser.set_window_size(1400, 700)
    browser.get(page.as_uri())
    WebDriverWait(browser, 20).until(lambda b: b.find_elements("css selector", ".scatterlayer .point"))
    hovered = browser.find_element("id", "hovered")
    assert hovered.text == "hover a point"
    for point in browser.find_elements("css selector", ".scatterlayer .point"):  # until the one >=60 person's point
        ActionChains(browser).move_to_element(point).perform()
        if "p000" in hovered.text:
            break
    assert hovered.text == "p000 / mask1.jpg: true 17 N/F/60+, predicted 0 W/M/<30, age 61"
    assert hovered.find_element("tag name", "img").get_attribute("src").startswith("data:image/jpeg;base64,")
