"""The classifier's input size: one side (a square) or (height, width).

HAM10000's images are 4:3 (600x450, 200x150 in the dev set). The paper squashes them to a
square; ``data.image_size: [120, 160]`` keeps their aspect ratio instead. One convention
everywhere: a size is an int for a square and an (height, width) pair otherwise, the order
of numpy's and torch's image shapes. bundle.json writes an int for a square (what every
bundle so far says) and ``[h, w]`` otherwise, so a reader that expects an int fails loudly
instead of squashing.
"""
from __future__ import annotations

import re
from typing import Any, Union

import numpy as np

Size = Union[int, tuple[int, int]]

__all__ = ["Size", "size_hw", "canonical_size", "size_json", "size_text", "parse_size"]


def size_hw(size: Any) -> tuple[int, int]:
    """(height, width) of an int (a square) or an (h, w) pair; ValueError for anything else
    (a float, a bool, three numbers, a side <= 0)."""
    if isinstance(size, (bool, np.bool_)):
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            parts = list(size)
        except TypeError:
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
        if len(parts) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_))
                                      for s in parts):
            raise ValueError(f"size must be an int or (height, width) of two ints, got {size!r}")
        h, w = (int(s) for s in parts)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def canonical_size(size: Any) -> Size:
    """An int for a square (``[128, 128]`` -> 128), else the (h, w) tuple."""
    h, w = size_hw(size)
    return h if h == w else (h, w)


def size_json(size: Any) -> int | list[int]:
    """bundle.json's form: an int for a square, ``[h, w]`` otherwise."""
    s = canonical_size(size)
    return s if isinstance(s, int) else list(s)


def size_text(size: Any) -> str:
    """'128' for a square, '120x160' (height x width) otherwise: for messages and cards."""
    h, w = size_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def parse_size(text: str) -> Size:
    """The command line's ``--image-size``: '128' (a square) or '120x160' (height x width)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", str(text))
    if not m:
        raise ValueError(f"image size {text!r}: expected a side in px (128) or height x width (120x160)")
    return canonical_size(int(m[1]) if m[2] is None else (int(m[1]), int(m[2])))
