"""Kept for callers of 0.1 (``dermfuse.predict.predict_one`` and friends): inference as
functions now lives in `dermfuse.inference.predict`."""

from .inference.predict import *  # noqa: F401,F403
from .inference.predict import __all__  # noqa: F401
