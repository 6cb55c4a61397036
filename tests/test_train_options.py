"""Optional training features: backbone freezing, EMA of weights, TensorBoard events, torch.compile."""
import math

import torch

from maskcomp.crop import crop_faces
from maskcomp.data import load_train
from maskcomp.folds import make_folds
from maskcomp.device import Placement
from maskcomp.runs import open_run
from maskcomp.trainer import FoldTrainer, run_manifest, train

from conftest import config_for, fold_dir
from test_train import TINY


def _cfg(tiny_root, tmp_path, *overrides):
    cfg = config_for(tiny_root, tmp_path, *TINY, *overrides)
    crop_faces(cfg)
    make_folds(cfg)
    return cfg


def _trainer(cfg) -> FoldTrainer:
    return FoldTrainer(cfg, 0, load_train(cfg), open_run(cfg, run_manifest(cfg)), Placement(torch.device("cpu")))


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

    cfg = _cfg(tiny_root, tmp_path, "train.epochs=2", "train.tensorboard=true")
    train(cfg, folds=[0])
    events = EventAccumulator(str(fold_dir(cfg, 0) / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train_loss", "val_loss", "f1", "lr"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("f1")] == [1, 2]


def test_compiled_model_trains_and_matches_eager(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "train.epochs=1", "train.compile=true", "model.backbone=test_efficientnet")
    trainer = _trainer(cfg)
    assert isinstance(trainer.net, torch._dynamo.eval_frame.OptimizedModule)
    loss, _ = trainer._train_epoch(0)
    assert math.isfinite(loss) and loss > 0
    trainer.model.eval()
    x = torch.randn(4, 3, 48, 36)
    with torch.no_grad():
        eager, compiled = trainer.model(x), trainer.net(x)
    for head in eager:
        assert torch.allclose(eager[head], compiled[head], atol=1e-4), head
