"""The competition's files: train.csv, person folders and info.csv (tables), label fixes (label_fixes), folds over
persons (folds), the generated sample dataset (sample), CSV decoding (csvfiles)."""

from .folds import load_folds, make_folds
from .label_fixes import read_label_fixes
from .sample import make_sample
from .tables import load_eval, load_train, read_train

__all__ = ["load_eval", "load_folds", "load_train", "make_folds", "make_sample", "read_label_fixes", "read_train"]
