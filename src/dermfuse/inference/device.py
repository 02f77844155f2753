"""The device a command runs on, from its --device flag."""

from __future__ import annotations

from ..errors import InputError

__all__ = ["resolve_device"]


def resolve_device(name: str | None) -> str:
    """'auto' -> cuda where available, else cpu; 'cpu'/'cuda'/'cuda:N' as given (InputError
    for cuda on a machine without it)."""
    import torch

    name = (name or "cpu").strip()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device on this machine; use --device cpu")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return name
