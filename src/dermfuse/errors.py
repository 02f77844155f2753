"""Project errors. Each one carries a message that says what was wrong, where, and what
was expected; the CLI prints it without a traceback and exits non-zero."""

from __future__ import annotations

__all__ = ["DermfuseError", "DataError", "InputError", "BundleError", "ConfigError"]


class DermfuseError(Exception):
    """Base class of every error dermfuse raises on purpose."""


class DataError(DermfuseError, ValueError):
    """A data set cannot be read: unknown layout, missing columns, no images."""


class InputError(DermfuseError, ValueError):
    """One input to predict/serve is invalid: image, age, sex, site."""


class BundleError(DermfuseError, ValueError):
    """A model bundle is missing, truncated, edited or not a dermfuse bundle."""


class ConfigError(DermfuseError, ValueError):
    """A config file or override names an unknown key or holds a bad value."""
