"""Inference: the one engine (`Predictor`) and the trust part of a bundle (`Trust`)."""

from .predictor import Output, Predictor, encode_metadata
from .trust import Assessment, Trust, load_trust

__all__ = ["Predictor", "Output", "encode_metadata", "Assessment", "Trust", "load_trust"]
