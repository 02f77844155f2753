"""Ablation of the FT-MultiCNN: image-branch input {heatmap, image, overlay} x metadata
{with, without}, six variants on the same folds and seeds, compared fold by fold with the
paper's configuration (``heatmap+meta``).

The CAM backbone is fine-tuned once per fold on that fold's training rows; the heatmap and
overlay variants of the fold render their inputs from the same maps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import RunConfig
from .cv import RowSelection, Variant, run_plan
from .cv_stats import paired_differences  # re-exported: dermfuse.runs.ablate.paired_differences
from ..errors import ConfigError

__all__ = ["ABLATION_INPUTS", "REFERENCE", "ablation_variants", "run_ablation", "paired_differences"]

ABLATION_INPUTS = ("heatmap", "image", "overlay")
REFERENCE = "heatmap+meta"
"""The paper's configuration: jet-coloured Grad-CAM heatmap + metadata branch."""


def ablation_variants(cfg: RunConfig) -> list[Variant]:
    """``<input>+meta`` and ``<input>-only`` for each input, the reference first."""
    return [Variant(f"{inp}+meta" if meta else f"{inp}-only", "ft_multicnn", inp, meta, cfg.data.split)
            for inp in ABLATION_INPUTS for meta in (True, False)]


def run_ablation(cfg: RunConfig, folds: int | None = None, fold: int | None = None, progress: bool = True,
                 resume: bool = False, keep_checkpoints: bool = False, only: Sequence[str] | None = None,
                 rows: RowSelection | None = None) -> Path:
    """Run the six variants on ``folds`` folds (default ``cfg.data.folds``) into
    ``cfg.out``; ``fold=K`` runs one fold only. The FT-MultiCNN's architecture options
    (``image_backbone``, dropout, ...) and the CAM settings come from ``cfg``. Returns the
    run directory (with report.html and ablation.csv unless ``fold`` is given).

    ``only``: names of the variants this job trains (default all six). The plan keeps the
    whole grid, so `collect` names the others as missing, and a variant's numbers do not
    depend on which others ran (its initial weights are seeded per variant). Without a
    heatmap or overlay variant, no CAM backbone is trained. ``rows``: fold only the rows a
    split file puts in some parts (see `dermfuse.runs.cv.RowSelection`)."""
    if cfg.model.name != "ft_multicnn":
        raise ConfigError(f"ablate varies the FT-MultiCNN's inputs; model.name must be 'ft_multicnn', "
                          f"got {cfg.model.name!r}")
    grid = ablation_variants(cfg)
    names = [v.name for v in grid]
    if only is not None:
        unknown = [n for n in only if n not in names]
        if unknown or not only:
            what = f"unknown variant(s) {', '.join(map(repr, unknown))}" if unknown else "no variant named"
            raise ConfigError(f"ablate --variants: {what}; expected one or more of {', '.join(names)}")
    return run_plan(cfg, "ablate", grid, folds, fold, progress, resume, keep_checkpoints, reference=REFERENCE,
                    only=only, rows=rows)
