"""Kept for callers of 0.1 (``dermfuse.experiment.train_run`` and friends): the holdout
runs now live in `dermfuse.runs.holdout`."""

from .runs.holdout import *  # noqa: F401,F403
from .runs.holdout import __all__  # noqa: F401
