"""The infer stage (infer: each fold's checkpoint predicts the eval set and re-scores its validation images with
TTA) and eval persons found by grouping their images (grouping)."""

from .infer import infer, load_fold_model, require_current_predictions

__all__ = ["infer", "load_fold_model", "require_current_predictions"]
