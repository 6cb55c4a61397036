"""Optional training features: backbone freezing, EMA of weights, TensorBoard events, torch.compile."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from maskcomp.core.context import Context
from maskcomp.core.device import Placement
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import load_folds, make_folds
from maskcomp.data.tables import load_train
from maskcomp.runs import open_run
from maskcomp.train import augment, batchsize
from maskcomp.train.batchsize import largest_fitting
from maskcomp.train.dataset import build_cache
from maskcomp.train.models import normalisation
from maskcomp.train.trainer import FoldTrainer, run_manifest, train

from conftest import TINY_TRAIN, config_for, fold_dir

pytestmark = pytest.mark.slow  # trains or runs whole stages


def _cfg(tiny_root, tmp_path, *overrides):
    cfg = config_for(tiny_root, tmp_path, *TINY_TRAIN, *overrides)
    crop_faces(cfg)
    make_folds(cfg)
    return cfg


def _trainer(cfg) -> FoldTrainer:
    ctx = Context(cfg)
    return FoldTrainer(ctx, 0, load_train(ctx), open_run(cfg, run_manifest(ctx)), Placement(torch.device("cpu")))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


def test_frozen_backbone_keeps_weights_then_trains(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "train.epochs=2", "model.freeze_backbone_epochs=1")
    trainer = _trainer(cfg)
    backbone, heads = _snapshot(trainer.model.backbone), _snapshot(trainer.model)
    trainer._train_epoch(0)
    assert not _changed(backbone, trainer.model.backbone), "a frozen backbone's weights moved"
    assert any(not k.startswith("backbone.") for k in _changed(heads, trainer.model)), "the heads did not train"
    trainer._train_epoch(1)
    assert _changed(backbone, trainer.model.backbone), "the backbone did not train after the frozen epochs"


def test_ema_weights_are_what_best_checkpoint_keeps(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "train.epochs=1", "train.batch_size=4", "train.ema=true", "train.ema_decay=0.5")
    train(cfg, folds=[0])
    run = fold_dir(cfg, 0)
    best = torch.load(run / "best.pt", weights_only=False)["model"]
    last = torch.load(run / "last.pt", weights_only=False)
    ema = {k.removeprefix("module."): v for k, v in last["ema"].items()}
    weights = [k for k in best if k.endswith("weight")]
    assert all(torch.equal(best[k], ema[k]) for k in weights)
    assert any(not torch.equal(best[k], last["model"][k]) for k in weights), "EMA weights equal the raw weights"


def test_tensorboard_events_hold_the_epoch_scalars(tiny_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tiny_root, tmp_path, "train.epochs=2", "train.loggers=[tensorboard]")
    train(cfg, folds=[0])
    events = EventAccumulator(str(fold_dir(cfg, 0) / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train_loss", "val_loss", "f1", "lr"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("f1")] == [1, 2]


def _learns(trainer: FoldTrainer, epochs: int = 3) -> list[float]:
    """Train `epochs` epochs; every parameter group moved and the loss went down."""
    before = _snapshot(trainer.model)
    losses = [trainer._train_epoch(e)[0] for e in range(epochs)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses
    moved = _changed(before, trainer.model)
    assert any(k.startswith("backbone.") for k in moved) and any(not k.startswith("backbone.") for k in moved)
    return losses


def test_compiled_model_trains_and_matches_eager(tiny_root, tmp_path):
    cfg = _cfg(
        tiny_root, tmp_path, "train.epochs=3", "train.compile=true", "model.backbone=test_efficientnet", "train.lr=0.01"
    )
    trainer = _trainer(cfg)
    assert isinstance(trainer.net, torch._dynamo.eval_frame.OptimizedModule)
    _learns(trainer)
    trainer.model.eval()
    x = torch.randn(4, 3, 48, 36)
    with torch.no_grad():
        eager, compiled = trainer.model(x), trainer.net(x)
    for head in eager:
        assert torch.allclose(eager[head], compiled[head], atol=1e-4), head


def test_mixup_inside_the_trainer_mixes_the_batches_it_trains_on(tiny_root, tmp_path, monkeypatch):
    cfg = _cfg(
        tiny_root,
        tmp_path,
        "train.epochs=3",
        "model.head=single",
        "augment.mixup_alpha=0.4",
        "augment.cutmix_alpha=1.0",
        "augment.mix_prob=1.0",
        "train.lr=0.01",
    )
    trainer = _trainer(cfg)
    assert trainer.mixup is not None
    mixed = []
    original = trainer.criterion
    trainer.criterion = lambda outputs, targets: (
        mixed.append(targets["label"].is_floating_point()) or original(outputs, targets)
    )
    _learns(trainer)
    assert mixed and all(mixed), "the loss never saw Mixup's soft targets"


def test_balanced_class_weights_reach_the_loss(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "train.epochs=3", "loss.class_weights=balanced", "train.lr=0.01")
    trainer = _trainer(cfg)
    weights = trainer.criterion.class_weights
    assert set(weights) == {"mask", "gender", "age"}
    # 5 of a person's 7 images are worn masks: the worn class weighs least, the two others 5x as much
    assert weights["mask"][0] < weights["mask"][1] == weights["mask"][2]
    assert float(weights["mask"][1] / weights["mask"][0]) == pytest.approx(5.0)
    _learns(trainer)


def test_weighted_sampler_with_skip_bad_leaves_out_the_missing_crop(tiny_root, tmp_path):
    cfg = _cfg(
        tiny_root,
        tmp_path,
        "train.epochs=1",
        "folds.oversample.strategy=sampler",
        "folds.oversample.head=mask",
        "folds.oversample.targets={1: 0.5}",
        "data.skip_bad=true",
    )
    ctx = Context(cfg)
    images = load_train(ctx)
    gone = images.loc[load_folds(cfg, images) != 0, "image_path"].iloc[0]
    trainer = FoldTrainer(
        ctx,
        0,
        images.assign(image_path=images["image_path"].replace(gone, gone + ".missing")),
        open_run(cfg, run_manifest(ctx)),
        Placement(torch.device("cpu")),
    )
    assert trainer.sampler.weights is not None and len(trainer.sampler.weights) == len(trainer.train_df)
    assert (gone + ".missing") not in set(trainer.train_df["image_path"])
    incorrect = (trainer.train_df["mask"] == 1).to_numpy()
    trainer.sampler.set_epoch(0)
    drawn = [i for i, _ in trainer.sampler]
    assert np.mean(incorrect[drawn]) > 2 * incorrect.mean(), "the sampler does not favour the oversampled class"


def test_overfit_batches_drives_the_training_loss_near_zero(tiny_root, tmp_path):
    """train.overfit_batches: the same batch every epoch, unaugmented; a wired-up model and loss memorise it."""
    cfg = _cfg(
        tiny_root,
        tmp_path,
        "train.overfit_batches=1",
        "train.epochs=30",
        "train.lr=0.01",
        "train.warmup_epochs=0",
        "train.patience=100",
        "model.drop_rate=0.0",
    )
    train(cfg, folds=[0])
    losses = pd.read_csv(fold_dir(cfg, 0) / "metrics.csv")["train_loss"]
    assert losses.iloc[0] > 1.0 and losses.iloc[-1] < 0.05


def test_limit_batches_trains_that_many_steps_per_epoch(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "train.batch_size=4", "train.limit_batches=2", "train.epochs=2")
    assert len(_trainer(cfg).train_loader) > 2
    train(cfg, folds=[0])
    steps = pd.read_csv(fold_dir(cfg, 0) / "lr.csv")
    assert len(steps) == 4 and steps["epoch"].tolist() == [0.0, 0.5, 1.0, 1.5]


def test_out_of_memory_in_a_step_is_one_line_naming_the_batch(tiny_root, tmp_path, monkeypatch):
    """torch.cuda.OutOfMemoryError, injected on the CPU: the run ends with the batch size that failed and a fix."""
    cfg = _cfg(tiny_root, tmp_path, "train.batch_size=8")
    trainer = _trainer(cfg)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "net", out_of_memory)
    with pytest.raises(
        MaskcompError,
        match=r"fold 0: out of CPU memory training a batch of 8 \(train.batch_size=8, "
        r".*set train.batch_size=4 train.accumulate=2 \(the same effective batch\), train.batch_size=auto",
    ):
        trainer._train_epoch(0)


def test_auto_batch_size_halves_on_out_of_memory():
    """From auto_batch_max, halved on each (injected) out-of-memory, the first size that runs is kept."""
    tried = []

    def fits_up_to_40(n: int) -> None:
        tried.append(n)
        if n > 40:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory with {n}")

    assert largest_fitting(fits_up_to_40, 256) == 32 and tried == [256, 128, 64, 32]
    with pytest.raises(MaskcompError, match="even a batch of 1 runs out of GPU memory"):
        largest_fitting(lambda n: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")), 4)


def test_auto_batch_size_in_a_fold_probes_the_model_and_is_recorded(tiny_root, tmp_path, monkeypatch):
    cfg = _cfg(tiny_root, tmp_path, "train.batch_size=auto", "train.auto_batch_max=8")
    trainer = _trainer(cfg)  # the real probe: a forward and backward of 8 images, which the CPU always fits
    assert trainer.batch_size == 8 and trainer.train_loader.batch_size == 8
    real = batchsize.probe_step

    def small_gpu(cfg, device, amp):
        step = real(cfg, device, amp)
        return lambda n: step(n) if n <= 5 else (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom"))

    monkeypatch.setattr(batchsize, "probe_step", small_gpu)
    cfg = _cfg(tiny_root, tmp_path, "train.batch_size=auto", "train.auto_batch_max=16", "train.epochs=1")
    train(cfg, folds=[0])
    env = json.loads((fold_dir(cfg, 0) / "env.json").read_text())
    assert (env["batch_size"], env["effective_batch"]) == (4, 4)


def test_accumulate_steps_the_optimiser_once_per_k_batches(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "train.batch_size=4", "train.accumulate=3")
    trainer = _trainer(cfg)
    steps = trainer.steps_per_epoch
    calls = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
    trainer._train_epoch(0)
    assert steps > 3 and len(calls) == -(-steps // 3) == trainer.updates_per_epoch
    assert all(p.grad is None for p in trainer.model.parameters()), "no gradient left over into the next epoch"


def test_background_suppression_replaces_what_lies_outside_the_face_box_in_the_training_loader(tiny_root, tmp_path):
    """augment.background=1 (grey, no jitter): every training image the loader yields is grey outside its record's
    face box and the cached crop inside it; validation images are left whole."""
    cfg = _cfg(tiny_root, tmp_path, "crop.mode=mtcnn", "augment.background=1.0", "augment.background_jitter=0",
               "augment.hflip=0", "augment.color_jitter=0", "augment.shift_scale_rotate=0")  # fmt: skip
    trainer = _trainer(cfg)
    dataset, cache = trainer.train_loader.dataset, build_cache(Context(cfg), tuple(cfg.train.img_size))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in normalisation(cfg.model.backbone))
    grey = (augment.GREY / 255 - mean) / std
    checked = 0
    for index, row in enumerate(cache.rows(trainer.train_df["image_path"])):
        x1, y1, x2, y2 = cache.faces[row]
        if (x2 - x1) * (y2 - y1) >= 0.9 * np.prod(cfg.train.img_size):
            continue  # a face box as large as the crop leaves no background
        image, _, _ = dataset[(index, 1234)]
        crop = (torch.from_numpy(np.asarray(cache.array[row])).permute(2, 0, 1) / 255 - mean) / std
        outside = torch.ones(image.shape[1:], dtype=torch.bool)
        outside[y1:y2, x1:x2] = False
        assert torch.allclose(image[:, outside], grey.expand_as(image)[:, outside], atol=1e-5)
        assert torch.allclose(image[:, ~outside], crop[:, ~outside], atol=1e-5), "the face is untouched"
        checked += 1
    assert checked >= 10
    assert trainer.val_loader.dataset.background is None


@pytest.mark.parametrize("fill", ["grey", "blur", "noise"])
def test_a_suppressed_background_changes_outside_only_and_repeats_with_the_seed(fill):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    box = np.array([8, 10, 22, 30])
    out = augment.suppress_background(image, box, fill, np.random.default_rng(1))
    assert np.array_equal(out[10:30, 8:22], image[10:30, 8:22])
    outside = np.ones((40, 30), dtype=bool)
    outside[10:30, 8:22] = False
    assert (out[outside] != image[outside]).mean() > 0.5
    step = augment.BackgroundSuppression(1.0, fill, 0.2)
    first, again = step(image, box, 7), step(image, box, 7)
    assert np.array_equal(first, again), "the sample's seed decides the draw: a resumed run sees the same images"
    assert not np.array_equal(first, step(image, box, 8)), "another seed jitters the box elsewhere"
    assert np.array_equal(augment.BackgroundSuppression(0.0, fill, 0.2)(image, box, 7), image)


def test_background_suppression_on_centre_crops_says_little_is_suppressed(tiny_root, tmp_path, caplog):
    cfg = _cfg(tiny_root, tmp_path, "crop.mode=center", "augment.background=1.0")
    with caplog.at_level("WARNING"):
        _trainer(cfg)
    assert "augment.background: the face boxes fill the crops (median 92% of each, as centre crops do)" in caplog.text
