"""The ensemble stage: blend of folds and experiments, nested decisions (age cut points, person grouping, biases),
the validated submission with its sidecar and the submissions index (stage)."""

from .stage import ensemble, load_experiment, validate_submission

__all__ = ["ensemble", "load_experiment", "validate_submission"]
