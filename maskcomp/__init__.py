"""maskcomp: a staged pipeline for the mask-status classification competition."""

__version__ = "0.1.0"
