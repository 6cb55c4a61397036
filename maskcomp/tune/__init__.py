"""make tune: an Optuna search over settings, each trial an ordinary content-keyed training run."""
