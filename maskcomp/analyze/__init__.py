"""Studying a trained run: the analysis page and the runs index (pages), label-noise candidates and relabel
(noise), the exploratory data analysis (eda)."""

from .eda import run_eda
from .noise import relabel
from .pages import analyze
from .runs_index import runs_index

__all__ = ["analyze", "relabel", "run_eda", "runs_index"]
