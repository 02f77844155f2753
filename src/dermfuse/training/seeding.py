"""The random streams of a training process: seeding a rank, and saving / restoring every
RNG it draws from (torch, CUDA, numpy, python) in a checkpoint, so that ``fit(resume=True)``
continues exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rank_seed", "rng_state", "seed_everything", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states as tensors and plain numbers."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
        "numpy_gauss": (int(np_state[3]), float(np_state[4])),
        "python": torch.tensor(py_state[1], dtype=torch.int64), "python_gauss": py_state[2],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], *s["numpy_gauss"]))
    random.setstate((3, tuple(s["python"].tolist()), s["python_gauss"]))


def rank_seed(seed: int, rank: int) -> int:
    """The global RNG seed of one rank: ``seed`` itself on rank 0 (a one-process run), and on
    rank r > 0 one drawn from (seed, r), so that ensemble members, whose seeds are consecutive,
    never share a rank's stream (``seed + rank`` would give member k on rank 1 the stream of
    member k + 1 on rank 0)."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
