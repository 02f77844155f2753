"""Cross-validation: several variants (models, input modes, split protocols) on the same
folds and seeds, one fold at a time, resumable and parallel-safe.

Run directory::

    RUN_DIR/config.yaml        the base config (a fold job with another config is refused)
    RUN_DIR/plan.json          kind (cv | ablate), folds, variants, data summary
    RUN_DIR/folds.csv          image_id, group (lesion), fold [, fold_image]: computed once
                               from data.split_seed (fold_<grouping>: another split's folds)
    RUN_DIR/_cam/<split>-fold<K>-<size>px/   the fold's CAM backbone and maps.npy (uint8);
                               <split> is the version-1 name (lesion, image) in a run
                               directory whose config.yaml has no config_version
    RUN_DIR/<variant>/fold<K>/ metrics.json, predictions.csv (out-of-fold), history.json,
                               checkpoint.pt while it runs (removed once DONE unless
                               keep_checkpoints), DONE (written last, atomically)
    RUN_DIR/summary.json, summary.csv, per_fold.csv, report.html   (`collect`)

A variant is a model name for ``cv`` (``cnn``; ``ft_multicnn+heatmap`` for another input;
``cnn@image`` for the image-leaky split of the protocol gap) or an input/metadata
combination for ``ablate`` (``heatmap+meta``). Folds whose DONE exists are skipped, so a
rerun continues; ``fold=K`` runs one fold as an independent job.

Inner folds: with ``rows=RowSelection(split_file, ("train",))`` the folds are made of
the rows a holdout run's split.csv puts in those parts only, so a recipe can be chosen on
lesion-grouped folds of a holdout's training part without its test rows ever being read;
plan.json records the selection and a fold job with another one is refused."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml
from rich.console import Console

from .. import __version__
from ..config import CONFIG_VERSION, RunConfig, config_from_dict, config_to_dict, save_config
from ..data.cache import CachedImages, build_cache
from ..data.splits import group_ids, kfold, validation_split
from ..errors import ConfigError, DataError
from ..explain.heatmap_input import INPUT_MODES, render_input
from ..io import atomic_write, atomic_write_text
from ..models import list_models, model_spec
from ..training.distributed import is_main_process
from ..training.loop import EPOCH_BASE, training_device
from .cohort import Cohort, cohort_for
from .holdout import select_part
from ..image_size import Size, size_json, size_text
from .config_checks import image_size_for, split_by, split_label
from .cv_report import collect, read_plan, render_summary
from .cv_stats import LEAKY
from .predictions_csv import write_predictions
from .variant import train_variant

__all__ = ["Variant", "RowSelection", "restrict_cohort", "parse_models", "run_cv", "run_protocol_gap",
           "run_plan", "collect", "render_summary", "DEFAULT_MODELS"]

DEFAULT_MODELS = ("cnn", "resnet50", "inception_v3", "ft_multicnn:heatmap")
"""The paper's comparison (Fig. 8): three baselines and the heatmap-guided FT-MultiCNN."""
LEAKY_SPLIT = "image-leaky"
_V1_FOLDER_NAMES = {"grouped": "lesion", "image-leaky": "image"}  # _cam/ folders of a version-1 run directory
_IGNORED_CONFIG = {("out",), ("data", "path"), ("data", "check_images"), ("train", "device"),
                   ("train", "num_workers"), ("train", "amp"), ("train", "augment_on"),
                   ("train", "channels_last")}  # may differ between fold jobs
console = Console(stderr=True)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowSelection:
    """The rows a cross-validation may use: those ``split_file`` (a holdout run's
    split.csv, columns image_id and part) puts in ``parts``, e.g. ("train",), or
    ("train", "val") for every row but the test part."""

    split_file: str
    parts: tuple[str, ...] = ("train",)

    @classmethod
    def parse(cls, split_file: str, parts: str | Sequence[str] = "train") -> "RowSelection":
        names = [p.strip() for p in (parts.split(",") if isinstance(parts, str) else parts) if p.strip()]
        if not names:
            raise ConfigError("--part: name at least one part of the split file, e.g. train")
        if "test" in names:
            log.warning("inner folds over the 'test' part of %s: that part is the holdout's", split_file)
        return cls(str(split_file), tuple(dict.fromkeys(names)))


def restrict_cohort(cohort: Cohort, rows: RowSelection) -> tuple[Cohort, dict[str, Any]]:
    """The cohort's rows that ``rows`` selects (order kept), and what plan.json records:
    the split file, the parts, how many rows were kept and left out, and a digest of the
    kept image ids (a later fold job must select the same ones)."""
    table = cohort.table
    idx = np.unique(np.concatenate([select_part(table, rows.split_file, p) for p in rows.parts]))
    sub = table.iloc[idx].reset_index(drop=True)
    ids = sorted(sub["image_id"].astype(str))
    # a lesion (or patient) with images both in the chosen parts and elsewhere: the outer split was not grouped
    groups = group_ids(table, "auto")
    inside = np.zeros(len(table), bool)
    inside[idx] = True
    shared = sorted(set(groups[inside]) & set(groups[~inside]))
    if shared:
        log.warning("%d lesions of the chosen parts of %s also have images outside them (the holdout split "
                    "was not lesion-grouped)", len(shared), rows.split_file)
    info = {"split_file": str(Path(rows.split_file).resolve()), "parts": list(rows.parts),
            "n_rows": int(len(sub)), "n_left_out": int(len(table) - len(sub)),
            "groups_shared_with_left_out": len(shared),
            "image_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    restricted = Cohort(sub, cohort.report, cohort.read, cohort.classes, cohort.labels[idx], cohort.synthetic)
    return restricted, info


@dataclass(frozen=True)
class Variant:
    """One column of a comparison: a model, what its image branch sees, whether it gets
    metadata, and the split protocol its folds come from."""

    name: str  # directory name and table label
    model: str
    input: str = "image"
    use_meta: bool = True
    split: str = "grouped"  # data.split

    def config(self, cfg: RunConfig) -> RunConfig:
        """A copy of ``cfg`` set up for this variant."""
        out = copy.deepcopy(cfg)
        out.model.name, out.model.input, out.model.use_meta = self.model, self.input, self.use_meta
        out.data.split = self.split
        return out


def parse_models(models: Sequence[str] | str, cfg: RunConfig) -> list[Variant]:
    """Variants from model specs ``NAME`` (input ``cfg.model.input``) or ``NAME:INPUT``
    (e.g. ``ft_multicnn:heatmap``, the paper's method). Metadata-only models always get
    input 'image' (they ignore it); ``use_meta`` is ``cfg.model.use_meta`` for the
    FT-MultiCNN and whether the model takes metadata at all for the others."""
    if isinstance(models, str):
        models = models.split(",")
    out: list[Variant] = []
    for spec in (m.strip() for m in models):
        name, sep, inp = spec.replace("+", ":").partition(":")
        if name not in list_models():
            raise ConfigError(f"model {name!r} in {spec!r} is not registered; known: {', '.join(list_models())}")
        inp = inp if sep else cfg.model.input
        if inp not in INPUT_MODES:
            raise ConfigError(f"input {inp!r} in {spec!r}: expected one of {', '.join(INPUT_MODES)}")
        ms = model_spec(name)
        if not ms.uses_image:
            inp = "image"
        label = f"{name}+{inp}" if sep and ms.uses_image else name
        use_meta = cfg.model.use_meta if name == "ft_multicnn" else ms.uses_meta
        out.append(Variant(label, name, inp, use_meta, cfg.data.split))
    names = [v.name for v in out]
    if not out or len(set(names)) != len(names):
        raise ConfigError(f"models: expected distinct model names, got {list(models)!r}")
    return out


def run_cv(cfg: RunConfig, models: Sequence[str] | str = DEFAULT_MODELS, folds: int | None = None,
           fold: int | None = None, progress: bool = True, resume: bool = False,
           protocol_gap: bool = False, keep_checkpoints: bool = False,
           rows: RowSelection | None = None) -> Path:
    """Cross-validate ``models`` on the same ``folds`` (default ``cfg.data.folds``) into
    ``cfg.out``. ``fold=K`` runs fold K only (no report; merge with `collect`); otherwise
    every unfinished fold runs and the report is written. ``protocol_gap`` also runs every
    model on image-level folds (variant ``NAME@image``). ``rows``: fold only the rows a
    split file puts in some parts (inner folds of a holdout's training part). Returns the
    run directory."""
    variants = parse_models(models, cfg)
    if protocol_gap:
        if cfg.data.split == LEAKY_SPLIT:
            raise ConfigError("protocol gap compares a grouped split with the image-level one; "
                              "use --split grouped, lesion or patient, not image-leaky")
        variants += [Variant(f"{v.name}{LEAKY}", v.model, v.input, v.use_meta, LEAKY_SPLIT) for v in variants]
    return run_plan(cfg, "cv", variants, folds, fold, progress, resume, keep_checkpoints, rows=rows)


def run_protocol_gap(cfg: RunConfig, models: Sequence[str] | str, folds: int | None = None,
                     fold: int | None = None, progress: bool = True, resume: bool = False) -> Path:
    """The same models under the grouped split (``cfg.data.split``) and the image-level
    split; the report's 'Protocol gap' section says how much the leaky split inflates
    each metric. ``run_cv(..., protocol_gap=True)``."""
    return run_cv(cfg, models, folds, fold, progress, resume, protocol_gap=True)


def run_plan(cfg: RunConfig, kind: str, variants: list[Variant], folds: int | None, fold: int | None,
             progress: bool = True, resume: bool = False, keep_checkpoints: bool = False,
             reference: str | None = None, only: Sequence[str] | None = None,
             rows: RowSelection | None = None) -> Path:
    """Run ``variants`` on every unfinished fold (or fold ``fold`` only) of ``cfg.out``;
    the shared engine of `run_cv` and `run_ablation`. Writes the report unless ``fold``.
    ``only``: train just the variants of these names; the plan still holds all of them.
    ``rows``: use only the rows a split file puts in some parts (see `RowSelection`)."""
    if cfg.train.members != 1:
        raise ConfigError(f"train.members = {cfg.train.members}: cross-validation and ablations compare "
                          "single models (train.members = 1); seed ensembles are built by `dermfuse train`")
    cfg = copy.deepcopy(cfg)
    cfg.data.folds = int(folds if folds is not None else cfg.data.folds)
    k = cfg.data.folds
    if fold is not None and not 0 <= fold < k:
        raise ConfigError(f"fold={fold}: expected 0..{k - 1} for {k} folds")
    run_dir = Path(cfg.out)
    cohort = cohort_for(cfg, progress)
    selection = None
    if rows is not None:
        cohort, selection = restrict_cohort(cohort, rows)
        if progress:
            console.print(f"inner folds: {selection['n_rows']} rows in part(s) {', '.join(rows.parts)} of "
                          f"{rows.split_file}; {selection['n_left_out']} other rows are not read")
    runner = _Runner(cfg, cohort, run_dir, progress, resume, keep_checkpoints, selection)
    runner.prepare(kind, variants, reference)
    todo = variants if only is None else [v for v in variants if v.name in only]
    for f in [fold] if fold is not None else range(k):
        runner.run_fold(f, todo)
    if fold is not None:
        if progress:
            console.print(f"fold {fold} finished; merge finished folds with `dermfuse cv --collect {run_dir}`")
        return run_dir
    collect(run_dir, progress=progress)
    return run_dir


# --- the run directory --------------------------------------------------------------------


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with the keys it lacks taken from ``defaults``: a run directory written
    before a config key existed ran with what that key's default does now."""
    out = dict(defaults)
    for key, value in saved.items():
        out[key] = (_with_defaults(value, defaults[key]) if isinstance(value, dict) and
                    isinstance(defaults.get(key), dict) else value)
    return out


def _hardware(cfg: RunConfig) -> str:
    """What a fold trained on, e.g. 'cpu' or 'cuda, mixed precision': outside the config
    check (fold jobs may run on different machines), so `collect` says when folds differ."""
    device = training_device(cfg.train.device)
    return device.type + (", mixed precision" if cfg.train.amp and device.type == "cuda" else "")


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        path = (*prefix, key)
        if path in _IGNORED_CONFIG:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, path)
        elif va != vb:
            out.append(f"{'.'.join(path)}: {va!r} in the run directory, {vb!r} now")
    return out


class _Runner:
    """State of one job: the cohort, its folds, image caches and the current fold's maps."""

    def __init__(self, cfg: RunConfig, cohort: Cohort, run_dir: Path, progress: bool, resume: bool,
                 keep_checkpoints: bool, selection: dict[str, Any] | None = None) -> None:
        self.cfg, self.cohort, self.run_dir = cfg, cohort, run_dir
        self.selection = selection
        self.progress, self.resume, self.keep = progress, resume, keep_checkpoints
        self.main = is_main_process()
        self.folds: dict[str, np.ndarray] = {}
        self.v1_dir = False  # a run directory begun before config_version 2 (see prepare)
        self._caches: dict[int, CachedImages] = {}
        self._maps: dict[tuple[str, int, int], np.ndarray] = {}

    # -- set-up: config.yaml, plan.json, folds.csv; the same in every fold job
    def prepare(self, kind: str, variants: list[Variant], reference: str | None) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir / "config.yaml"
        if cfg_path.exists():
            raw = yaml.safe_load(cfg_path.read_text()) or {}
            self.v1_dir = "config_version" not in raw  # started before config_version 2: old folder names
            try:  # in today's names (a version-1 config is upgraded), then keys it lacks at their defaults
                raw = config_to_dict(config_from_dict(raw))
            except ConfigError:  # not loadable now: compared as it stands, so the diff names the keys
                pass
            saved = _with_defaults(raw, config_to_dict(RunConfig()))
            diff = _config_diff(saved, config_to_dict(cfg))
            if diff:
                raise ConfigError(f"{run_dir} was started with another config ({'; '.join(diff)}); "
                                  f"use the same options or another --out")
        elif self.main:
            save_config(cfg, cfg_path)  # atomic (dermfuse.io)
        self._check_selection()
        self._prepare_folds({v.split for v in variants})
        if self.main:
            self._write_plan(kind, variants, reference)

    def _check_selection(self) -> None:
        """A fold job must fold the rows the run began with (same split-file selection)."""
        path = self.run_dir / "plan.json"
        if not path.exists():
            return
        old = json.loads(path.read_text()).get("rows")
        new = self.selection
        key = ("parts", "image_ids_sha256")
        if (old is None) != (new is None) or (old and any(old[k] != new[k] for k in key)):
            def say(sel: dict[str, Any] | None) -> str:
                return ("all clean rows" if sel is None else
                        f"part(s) {', '.join(sel['parts'])} of {sel['split_file']} ({sel['n_rows']} rows)")
            raise ConfigError(f"{self.run_dir} folds {say(old)}; this job would fold {say(new)}: "
                              "give the same --split-file and --part, or another --out")

    def _fold_column(self, split: str) -> str:
        """folds.csv column: 'fold' for the run's split, fold_<grouping> (e.g. fold_image) for another."""
        return "fold" if split == self.cfg.data.split else f"fold_{split_by(split)}"

    def _prepare_folds(self, splits: set[str]) -> None:
        table, k, seed = self.cohort.table, self.cfg.data.folds, self.cfg.data.split_seed
        ids = table["image_id"].astype(str).to_numpy()
        # group: lesion (or patient) of each row, what a bootstrap of the results resamples
        fresh = pd.DataFrame({"image_id": ids, "group": group_ids(table, "auto")})
        for split in [self.cfg.data.split, *sorted(splits - {self.cfg.data.split})]:  # "fold" first
            self.folds[split] = kfold(table, k, seed=seed, by=split_by(split))
            fresh[self._fold_column(split)] = self.folds[split]
        path = self.run_dir / "folds.csv"
        if path.exists():
            saved = pd.read_csv(path, dtype={"image_id": str})
            shared = [c for c in fresh.columns if c in saved.columns and c not in ("image_id", "group")]
            same = (len(saved) == len(fresh) and (saved["image_id"].to_numpy() == ids).all()
                    and all((saved[c].to_numpy() == fresh[c].to_numpy()).all() for c in shared))
            if not same:
                raise DataError(f"{path}: the saved folds differ from those recomputed from the data set "
                                f"({self.cfg.data.path}, {len(fresh)} clean images) and seed {seed}; the data or "
                                f"its cleaning changed since the run began. Use the same data or another --out.")
            extra = [c for c in fresh.columns if c not in saved.columns]
            if not extra:
                return
            fresh = saved.assign(**{c: fresh[c].to_numpy() for c in extra})
        if self.main:
            atomic_write(path, lambda tmp: fresh.to_csv(tmp, index=False))

    def _write_plan(self, kind: str, variants: list[Variant], reference: str | None) -> None:
        path = self.run_dir / "plan.json"
        old = read_plan(path) if path.exists() else None
        known = {v["name"]: v for v in (old or {}).get("variants", [])}
        if old and (old["kind"] != kind or old["folds"] != self.cfg.data.folds):
            raise ConfigError(f"{self.run_dir} holds a {old['kind']} run with {old['folds']} folds; this is a "
                              f"{kind} run with {self.cfg.data.folds} folds: use another --out")
        for v in variants:
            if v.name in known and known[v.name] != asdict(v):
                raise ConfigError(f"variant {v.name!r} in {self.run_dir} was {known[v.name]}, now {asdict(v)}")
            known[v.name] = asdict(v)
        c = self.cohort
        plan = {
            "config_version": CONFIG_VERSION, "kind": kind, "folds": self.cfg.data.folds,
            "seed": self.cfg.data.split_seed, "split": self.cfg.data.split,
            "split_label": split_label(self.cfg.data.split), "reference": reference,
            "variants": list(known.values()), "rows": self.selection,
            "data": {"path": str(self.cfg.data.path), "format": c.read.format, "n_images": int(len(c.table)),
                     "classes": list(c.classes), "synthetic": bool(c.synthetic), "summary": c.summary},
            "dermfuse": __version__,
        }
        atomic_write_text(path, json.dumps(plan, indent=2, default=str))

    # -- inputs shared by the variants of one fold
    def cache(self, size: Size) -> CachedImages:
        if size not in self._caches:
            self._caches[size] = build_cache(self.cohort.table, size=size, method=self.cfg.data.resize_method,
                                             progress=self.progress)
        return self._caches[size]

    def split_rows(self, split: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, val, test) positions of fold ``k`` under ``split``; val is carved out of
        the training rows with the same grouping and seed for every variant."""
        folds = self.folds[split]
        train = np.flatnonzero(folds != k)
        train, val = validation_split(self.cohort.table, train, fraction=self.cfg.data.val_fraction,
                                      seed=self.cfg.data.split_seed, by=split_by(split))
        return train, val, np.flatnonzero(folds == k)

    def maps(self, split: str, k: int, size: Size) -> np.ndarray:
        """The fold's heatmaps (N, H, W) in [0, 1]: the CAM backbone is fine-tuned on this
        fold's training rows only, once per fold; maps.npy keeps them for later jobs."""
        key = (split, k, size)
        if key in self._maps:
            return self._maps[key]
        from ..training.heatmap_stage import heatmap_stage

        name = _V1_FOLDER_NAMES.get(split, split) if self.v1_dir else split
        folder = self.run_dir / "_cam" / f"{name}-fold{k}-{size_text(size)}px"
        path = folder / "maps.npy"
        if path.exists():
            maps = np.load(path).astype(np.float32) / 255.0
        else:
            cache = self.cache(size)
            train, val, _ = self.split_rows(split, k)
            stage_cfg = copy.deepcopy(self.cfg)
            stage_cfg.model.input = "image"  # render nothing here: each variant renders its own mode
            stage_cfg.data.image_size = size_json(size)
            if self.progress:
                console.print(f"[bold]fold {k}[/bold]: fine-tuning CAM backbone {self.cfg.cam.backbone} "
                              f"on {len(train)} training images")
            stage = heatmap_stage(stage_cfg, self.cohort.table, self.cohort.labels, self.cohort.classes,
                                  cache.images, train, val, folder, cache_key=cache.key, progress=self.progress,
                                  resume=self.resume)
            maps = stage.maps
            if self.main:
                atomic_write(path, lambda tmp: np.save(tmp, np.rint(maps * 255).astype(np.uint8)),
                             suffix=".npy")  # np.save appends .npy otherwise
                if not self.keep:
                    (folder / "cam_backbone" / "checkpoint.pt").unlink(missing_ok=True)
        self._maps[key] = maps
        return maps

    # -- one fold
    def run_fold(self, k: int, variants: list[Variant]) -> None:
        self._maps.clear()  # one fold's maps in memory at a time
        for v in variants:
            folder = self.run_dir / v.name / f"fold{k}"
            if (folder / "DONE").exists():
                if self.progress:
                    console.print(f"{v.name} fold {k}: done already, skipped")
                continue
            if self.progress:
                console.print(f"[bold]{v.name}[/bold] fold {k + 1}/{self.cfg.data.folds} "
                              f"({v.model}, input {v.input}, {'with' if v.use_meta else 'without'} metadata, "
                              f"{split_label(v.split)})")
            self.run_variant(v, k, folder)

    def run_variant(self, v: Variant, k: int, folder: Path) -> dict[str, Any]:
        """Train variant ``v`` on fold ``k``'s training rows and score its test rows."""
        t0 = time.time()
        cfg, table, y, classes = v.config(self.cfg), self.cohort.table, self.cohort.labels, self.cohort.classes
        cfg.out = str(folder)
        train, val, test = self.split_rows(v.split, k)
        size = image_size_for(cfg)
        images = self.cache(size).images
        if v.input != "image" and model_spec(v.model).uses_image:
            images = render_input(v.input, np.asarray(images), self.maps(v.split, k, size))
        folder.mkdir(parents=True, exist_ok=True)
        done = train_variant(cfg, table, y, classes, images, train, val, test, folder, resume=self.resume,
                             progress=self.progress)
        res, proba, metrics = done.fit, done.proba, dict(done.metrics)
        metrics.update(variant=v.name, fold=k, model=v.model, input=v.input, use_meta=v.use_meta,
                       split=split_label(v.split), n_train=int(len(train)), n_val=int(len(val)),
                       n_test=int(len(test)), best_epoch=res.best_epoch, epoch_base=EPOCH_BASE, weights_source=done.weights_source,
                       hardware=_hardware(cfg), warnings=done.warnings, seconds=time.time() - t0)
        if self.main:
            atomic_write_text(folder / "history.json", json.dumps(res.history, indent=2))
            atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2))
            write_predictions(folder / "predictions.csv", table["image_id"].to_numpy()[test], classes, y[test], proba,
                              extra={"fold": k})
            atomic_write_text(folder / "DONE", json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                      "seconds": metrics["seconds"]}))
            if not self.keep:
                (folder / "checkpoint.pt").unlink(missing_ok=True)
        if self.progress:
            console.print(f"{v.name} fold {k}: balanced accuracy {metrics['balanced_accuracy']:.4f}, "
                          f"accuracy {metrics['accuracy']:.4f} ({metrics['seconds']:.0f} s)")
        return metrics
