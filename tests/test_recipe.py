"""The competition's lessons: known fixes, half CutMix, soft-F1 loss, pretrained PyPI weights, recipe configs."""

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from maskcomp.core.config import load_config
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.core.metrics import macro_f1
from maskcomp.data.tables import load_train
from maskcomp.train.augment import half_cutmix
from maskcomp.train.losses import Criterion, soft_f1_loss
from maskcomp.train.models import create_backbone, create_model, head_sizes, pypi_weights_file, remap_by_order

from conftest import config_for

KNOWN = {
    "006359": "male",
    "006360": "male",
    "006361": "male",
    "006362": "male",
    "006363": "male",
    "006364": "male",
    "001498-1": "female",
    "004432": "female",
    "005223": "female",
}
SWAPPED = {"000020", "004418", "005227"}


def test_known_fixes_flip_exactly_the_listed_labels(data_copy, tmp_path):
    csv = data_copy / "train" / "train.csv"
    persons = pd.read_csv(csv, dtype=str)
    # the first rows take the ids of the published fixes, with the wrong labels those persons carried;
    # row 0 is a first 001498, so the later 001498 row becomes person 001498-1
    wanted = ["001498", *KNOWN, *sorted(SWAPPED)]
    for i, pid in enumerate(wanted):
        persons.loc[i, "id"] = pid.removesuffix("-1")
        if pid in KNOWN:
            persons.loc[i, "gender"] = "female" if KNOWN[pid] == "male" else "male"
    persons.to_csv(csv, index=False)
    before = load_train(Context(config_for(data_copy, tmp_path)))
    after = load_train(Context(config_for(data_copy, tmp_path, "data.known_label_fixes=true")))
    assert "001498-1" in set(after["person_id"])
    changed = before.merge(after, on="image_path", suffixes=("_b", "_a"))
    assert set(changed.loc[changed["gender_b"] != changed["gender_a"], "person_id_a"]) == set(KNOWN)
    assert after.groupby("person_id")["gender"].first()[list(KNOWN)].to_dict() == KNOWN
    mask_changed = changed[changed["mask_b"] != changed["mask_a"]]
    assert set(mask_changed["person_id_a"]) == SWAPPED
    assert set(mask_changed["stem_a"]) == {"incorrect_mask", "normal"}
    assert len(changed) == len(before) == len(after)


def test_half_cutmix_keeps_label_and_size():
    g = torch.Generator().manual_seed(0)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 6).clone()
    label = torch.tensor([5, 5, 7, 2])
    age = torch.tensor([2, 2, 1, 2])
    out = half_cutmix(images, label, age, prob=1.0, rare_only=False, generator=g)
    assert out.shape == images.shape
    for i in (0, 1):  # each got one half from its same-label mate
        halves = {float(out[i, 0, 0, 0]), float(out[i, 0, 0, -1])}
        assert halves == {0.0, 1.0}
    assert torch.equal(out[2], images[2]) and torch.equal(out[3], images[3])  # no same-label partner
    rare = half_cutmix(images, torch.tensor([5, 5, 5, 5]), torch.tensor([0, 0, 2, 2]), 1.0, True, g)
    assert torch.equal(rare[:2], images[:2]) and not torch.equal(rare[2:], images[2:])


def test_soft_f1_equals_one_minus_macro_f1_on_one_hot():
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.integers(0, 18, 200))
    pred = torch.where(torch.as_tensor(rng.random(200)) < 0.7, y, torch.as_tensor(rng.integers(0, 18, 200)))
    logits = F.one_hot(pred, 18).float() * 1e4
    assert float(soft_f1_loss(logits, y)) == pytest.approx(1 - macro_f1(y.numpy(), pred.numpy()), abs=1e-4)


def test_weighted_loss_sum():
    cfg = load_config("configs/competition.yaml").loss
    logits = {"label": torch.randn(8, 18)}
    y = {"label": torch.randint(0, 18, (8,))}
    combo = Criterion(cfg, {"label": 18})(logits, y)
    focal = Criterion(cfg.model_copy(update={"terms": [{"name": "focal", "weight": 1.0}]}), {"label": 18})(logits, y)
    f1 = Criterion(cfg.model_copy(update={"terms": [{"name": "f1", "weight": 1.0}]}), {"label": 18})(logits, y)
    assert float(combo) == pytest.approx(0.6 * float(focal) + 0.4 * float(f1), rel=1e-5)


@pytest.mark.parametrize("name", ["competition", "competition_cpu"])
def test_recipe_configs_load(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.data.known_label_fixes and cfg.train.age_old_threshold == 58


@pytest.mark.parametrize(
    "backbone,params",
    [("efficientnet_lite0", 4_694_073), ("efficientnet_lite1", 5_470_408), ("efficientnet_lite2", 6_150_232)],
)
def test_pypi_weights_map_every_tensor(backbone, params):
    import timm

    source = torch.load(pypi_weights_file(backbone), map_location="cpu", weights_only=True)
    target = timm.create_model(backbone, pretrained=False).state_dict()
    mapped = remap_by_order(source, target)
    assert len(mapped) == len(target) == len(source)
    assert sum(t.numel() for t in source.values()) == params


@pytest.mark.slow
def test_competition_recipe_builds_and_learns_on_a_tiny_batch():
    """configs/competition.yaml as trained on a GPU: efficientnet_lite2 with the PyPI weights at 352x264, three
    heads, focal + soft-F1; a few steps on one batch must lower its loss."""
    cfg = load_config("configs/competition.yaml")
    torch.manual_seed(0)
    model = create_model(cfg.model)
    heads = head_sizes(cfg.model.head)
    assert cfg.model.backbone == "efficientnet_lite2" and cfg.train.img_size == [352, 264]
    assert heads == {"mask": 3, "gender": 2, "age": 3}
    x = torch.randn(2, 3, *cfg.train.img_size)
    targets = {
        "mask": torch.tensor([0, 2]),
        "gender": torch.tensor([1, 0]),
        "age": torch.tensor([2, 0]),
        "label": torch.tensor([5, 12]),
    }
    criterion = Criterion(cfg.loss, heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    model.train()
    for _ in range(4):
        outputs = model(x)
        assert {k: tuple(v.shape) for k, v in outputs.items()} == {"mask": (2, 3), "gender": (2, 2), "age": (2, 3)}
        loss = criterion(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def _classify(model, img):
    x = cv2.resize(img, (224, 224)).astype(np.float32) / 255
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        return model(torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]).topk(3).indices[0].tolist()


def test_pypi_weights_classify_imagenet_photos():
    model = create_backbone("efficientnet_lite0", "pypi", num_classes=1000).eval()
    assert _classify(model, skdata.chelsea()) == [285, 282, 281]
    assert _classify(model, skdata.coffee())[0] == 967


def test_pypi_weights_for_another_backbone_fail_in_one_line():
    with pytest.raises(
        MaskcompError,
        match="has weights for efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 only, not 'resnet18'",
    ):
        create_backbone("resnet18", "pypi")


def test_local_weights_file_and_pretrained_false(tmp_path):
    import timm

    source = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("mobilenetv3_small_050", str(path))
    key = "blocks.0.0.conv_dw.weight"
    assert torch.equal(loaded.state_dict()[key], source.state_dict()[key])
    with pytest.raises(MaskcompError, match="no such weights file"):
        create_backbone("mobilenetv3_small_050", str(tmp_path / "nope.pth"))
