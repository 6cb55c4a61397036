"""Training: the crop cache and loaders (dataset), augmentation (augment), the model factory (models), losses
(losses), optimiser and schedule (optim), the loop's state, early stopping, checkpoints and metric sinks (loop),
the fold trainer and the stage (trainer), and prediction with TTA and its tables (evaluate)."""

from .evaluate import predict, tta_view
from .models import create_model
from .trainer import run_manifest, train

__all__ = ["create_model", "predict", "run_manifest", "train", "tta_view"]
