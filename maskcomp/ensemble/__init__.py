"""The ensemble stage: blend of folds and experiments, nested decisions (age cut points, person grouping, biases),
the validated submission with its sidecar and the submissions index (stage)."""

from .blend import load_experiment
from .stage import ensemble
from .submission import validate_submission

__all__ = ["ensemble", "load_experiment", "validate_submission"]
