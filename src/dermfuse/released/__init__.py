"""The model shipped with the package: ``released/bundle/`` (a normal bundle, checked by
SHA-256 at load like every bundle) and ``released/LICENSE`` (its weights are CC BY-NC 4.0,
like the HAM10000 images they were trained on; the code of dermfuse is Apache-2.0).

`predict`, `serve`, `cam` and `evaluate` use it when no bundle is named."""

from __future__ import annotations

from pathlib import Path

from ..errors import BundleError

__all__ = ["RELEASED_BUNDLE", "RELEASED_LICENSE", "has_released", "resolve_bundle"]

RELEASED_BUNDLE = Path(__file__).parent / "bundle"
RELEASED_LICENSE = Path(__file__).parent / "LICENSE"


def has_released() -> bool:
    """Whether this installation carries the released model."""
    return (RELEASED_BUNDLE / "bundle.json").is_file()


def resolve_bundle(path: str | Path | None) -> Path:
    """``path`` as given, or the released bundle when None (BundleError where this
    installation has none)."""
    if path is not None:
        return Path(path)
    if not has_released():
        raise BundleError(f"no bundle named and no released model in this installation ({RELEASED_BUNDLE} "
                          "is missing); name one with --bundle PATH")
    return RELEASED_BUNDLE
