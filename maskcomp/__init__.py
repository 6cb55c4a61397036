"""maskcomp: a staged pipeline for the mask-status classification competition."""

from .core.openmp import choose_wait_policy

choose_wait_policy()  # before anything loads torch: every entry point, worker and torchrun rank imports maskcomp first

__version__ = "0.1.0"
