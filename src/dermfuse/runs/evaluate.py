"""``dermfuse evaluate``: score a bundle on a data set (every clean row, or the part of a run's
split.csv), with the trust part's risk-coverage and operating points, per-subgroup metrics
on request, and predictions.csv, metrics.json, risk_coverage.png and report.html.
`select_part` picks a split.csv's rows, for evaluate, export's scoring and explain-eval."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..constants import SYNTHETIC_BANNER
from ..data.cache import build_cache
from ..data.formats import detect_layout
from ..errors import ConfigError, DataError
from ..evaluation.metrics import compute_metrics
from ..evaluation.report import Section, figure_html, table_html, write_report
from ..inference.bundle import SEEN_FILE, load_bundle
from ..io import atomic_write_text
from .cohort import load_cohort
from .predictions_csv import write_predictions

__all__ = ["evaluate_bundle", "select_part", "decision_metrics"]

log = logging.getLogger("dermfuse")


def select_part(table: pd.DataFrame, split_file: str | Path, part: str) -> np.ndarray:
    """Positions of the rows that ``split_file`` (a run's split.csv) puts in ``part``."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DataError(f"split file not found: {split_file}")
    try:
        split = pd.read_csv(split_file)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{split_file}: not a readable CSV ({e})") from None
    if not {"image_id", "part"} <= set(split.columns):
        raise DataError(f"{split_file}: expected columns image_id, part (a run's split.csv); found {list(split.columns)}")
    parts = sorted(split["part"].astype(str).unique())
    if part not in parts:
        raise DataError(f"{split_file}: no rows in part {part!r}; parts there: {parts}")
    chosen = set(split.loc[split["part"] == part, "image_id"].astype(str))
    idx = np.flatnonzero(table["image_id"].astype(str).isin(chosen).to_numpy())
    if len(idx) < len(chosen):
        log.warning("%d of the %d %s images in %s are not among the clean rows of this data set",
                    len(chosen) - len(idx), len(chosen), part, split_file)
    if len(idx) == 0:
        raise DataError(f"none of the {part} images of {split_file} are in this data set")
    return idx


def decision_metrics(y: np.ndarray, decided: np.ndarray, classes) -> dict[str, Any]:
    """The metrics of decided class indices (an operating point's answers): accuracy, balanced
    accuracy, F1 and melanoma sensitivity. Scores such as AUC, ECE and log loss need
    probabilities, so they are left out rather than computed on one-hot rows."""
    onehot = np.eye(len(classes))[np.asarray(decided, np.int64)]
    return {k: v for k, v in compute_metrics(y, onehot, classes).items()
            if k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "melanoma_sensitivity", "n_images")}


def evaluate_bundle(bundle_path: str | Path | None, data_path: str | Path, format: str | None = None,
                    progress: bool = True, out: str | Path | None = None,
                    split_file: str | Path | None = None, part: str = "test",
                    column_map: dict[str, str] | None = None, operating_point: str = "argmax",
                    device: str = "cpu", by: Any = None, n_boot: int = 1000) -> dict[str, Any]:
    """Score a bundle (None: the released model) on every clean row of a data set, or with
    ``split_file`` (a run's split.csv) only on the rows it puts in ``part``; returns the
    metrics dict with a ``trust`` part (risk-coverage, the selective threshold's coverage and
    accuracy, the melanoma operating point), and writes predictions.csv, metrics.json,
    risk_coverage.png and report.html into ``out`` when given.

    ``by`` ('sex,age_band,site' or a list): also the metrics per subgroup, under
    ``metrics["subgroups"]`` (`dermfuse.evaluation.subgroups.subgroup_metrics`); report.html shows them."""
    from ..inference.device import resolve_device
    from ..inference.predictor import Predictor
    from ..inference.trust import Trust, selective_report
    from ..released import resolve_bundle

    if by:  # a bad key fails before any image is decoded
        from ..evaluation.subgroups import parse_by

        try:
            by = parse_by(by)
        except ValueError as e:
            raise ConfigError(f"--by: {e}") from None
    bundle = load_bundle(resolve_bundle(bundle_path), device=resolve_device(device))
    engine = Predictor.from_bundle(bundle)
    if operating_point != "argmax":
        (bundle.trust or Trust()).decide(np.zeros((0, len(bundle.classes))), bundle.classes, operating_point)
    column_map = _reading_map(bundle, data_path, split_file, format, column_map)
    cohort = load_cohort(data_path, format, True, progress, column_map)
    table, y = _scored_rows(cohort, bundle, split_file, part)
    seen = _seen_rows(bundle, table)
    cache = build_cache(table, size=bundle.image_size, method=bundle.resize_method, progress=progress)
    meta = bundle.encode_table(table)
    res = engine.run(cache.images, meta, progress=progress, features=engine.needs_features)
    proba = res.proba
    metrics = compute_metrics(y, proba, bundle.classes)
    metrics["model_id"] = bundle.model_id
    metrics["operating_point"] = operating_point
    metrics["trust"] = selective_report(y, proba, bundle.classes, bundle.trust, res.features)
    if operating_point != "argmax":
        decided = bundle.trust.decide(proba, bundle.classes, operating_point)
        metrics["at_operating_point"] = decision_metrics(y, decided, bundle.classes)
    metrics["unseen_categories"] = bundle.encoder.unseen_counts
    metrics["unrecognised_metadata"] = getattr(cohort.report, "unrecognised", {})
    metrics["cleaning"] = cohort.report.counts
    metrics["rows"] = "all clean rows" if split_file is None else f"part {part!r} of {split_file}"
    if seen is not None:
        metrics["rows_seen_in_training"] = seen
    if by:
        from ..evaluation.subgroups import subgroup_metrics

        try:
            metrics["subgroups"] = subgroup_metrics(table, proba, bundle.classes, by=by, n_boot=n_boot)
        except ValueError as e:
            raise ConfigError(f"--by {by}: {e}") from None
    if out:
        _write_outputs(Path(out), bundle, metrics, table, y, proba, data_path, cohort.synthetic)
    return metrics


def _reading_map(bundle, data_path: str | Path, split_file: str | Path | None, format: str | None,
                 column_map: dict[str, str] | None) -> dict[str, str] | None:
    """The column map to read ``data_path`` with: the given one, or the bundle's own where the
    data match no known format. Warns when every row of the training data would be scored
    (for a bundle without seen_images.txt: by its training path, as given then)."""
    trained_on = bundle.info.get("training_data", {}).get("path")
    listed = bundle.info.get("training_data", {}).get("seen_images")  # then `_seen_rows` counts, path or not
    if split_file is None and trained_on and not listed and Path(trained_on).resolve() == Path(data_path).resolve():
        log.warning("%s is the data set this bundle was trained on: every row is scored, training "
                    "rows included, so these metrics are optimistic. Pass --split-file RUN/split.csv "
                    "to score the held-out rows only.", data_path)
    saved_map = bundle.info.get("training_data", {}).get("column_map")
    if format is None and column_map is None and saved_map and detect_layout(data_path) is None:
        log.info("%s matches no known format: reading it with the column map the bundle was "
                 "trained with (%s)", data_path, saved_map)
        column_map = saved_map
    return column_map


def _seen_rows(bundle, table: pd.DataFrame) -> int | None:
    """How many scored rows the bundle trained or chose its epoch on (its seen_images.txt;
    None where the bundle does not record them); warns when any are."""
    seen = bundle.seen_images()
    if seen is None:
        return None
    n = int(table["image_id"].astype(str).isin(seen).sum())
    if n:
        log.warning("%d of the %d scored rows are images this bundle trained on or chose its epoch on "
                    "(%s lists them): these metrics are optimistic. Score held-out rows only, e.g. "
                    "--split-file RUN/split.csv --part test.", n, len(table), SEEN_FILE)
    return n


def _scored_rows(cohort, bundle, split_file: str | Path | None, part: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows scored (all, or ``split_file``'s ``part``) and their labels (N,) as the
    bundle's class indices; a class the bundle does not know is refused."""
    table = cohort.table
    if split_file is not None:
        table = table.iloc[select_part(table, split_file, part)].reset_index(drop=True)
    unknown = sorted(set(cohort.classes) - set(bundle.classes))
    if unknown and (table["label"].isin(unknown)).any():
        raise DataError(f"data set has classes the bundle does not know: {unknown}; bundle classes: {bundle.classes}")
    y = table["label"].map({c: i for i, c in enumerate(bundle.classes)}).to_numpy(np.int64)
    return table, y


def _write_outputs(out: Path, bundle, metrics: dict[str, Any], table: pd.DataFrame, y: np.ndarray,
                   proba: np.ndarray, data_path: str | Path, synthetic_data: bool) -> None:
    """metrics.json, predictions.csv, risk_coverage.png and report.html in ``out``."""
    from ..evaluation.plots import save_figure
    from ..inference.trust import plot_risk_coverage

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_predictions(out / "predictions.csv", table["image_id"].to_numpy(), bundle.classes, y, proba)
    shipped = bundle.trust.selective.threshold if bundle.trust and bundle.trust.selective else None
    save_figure(plot_risk_coverage(y, proba, shipped, title=f"{bundle.model_id} on {Path(data_path).name}"),
                out / "risk_coverage.png")
    _evaluate_report(out, bundle, metrics, data_path, synthetic_data=synthetic_data)


def _evaluate_report(out: Path, bundle, metrics: dict[str, Any], data_path: str | Path,
                     synthetic_data: bool = False) -> None:
    """report.html of ``dermfuse evaluate --out``: headline metrics, the risk-coverage curve and
    what the trust part does on these rows."""
    t = metrics.get("trust") or {}
    rows = [[k, metrics.get(k)] for k in ("n_images", "accuracy", "balanced_accuracy", "macro_f1",
                                          "melanoma_sensitivity", "auc_macro") if k in metrics]
    sections = [Section("Metrics (argmax, every row)", table_html(rows, ["metric", "value"]))]
    body = figure_html((out / "risk_coverage.png").read_bytes(), "risk-coverage: error rate of the answered images against "
                       "the share answered, ordered by top probability") if (out / "risk_coverage.png").exists() else ""
    s = t.get("selective")
    if s:
        body += table_html([["threshold (top probability)", s["threshold"]], ["target coverage", s["target_coverage"]],
                            ["coverage on these rows", s["coverage"]], ["accuracy of answered", s["accuracy"]],
                            ["balanced accuracy of answered", s["balanced_accuracy"]],
                            ["accuracy, all rows", s["accuracy_all"]],
                            ["balanced accuracy, all rows", s["balanced_accuracy_all"]]], ["selective prediction", ""])
    mo = t.get("melanoma_operating_point")
    if mo:
        body += table_html([["threshold P(mel)", mo["threshold"]], ["target sensitivity", mo["target_sensitivity"]],
                            ["sensitivity", mo["sensitivity"]], ["specificity", mo["specificity"]],
                            ["argmax sensitivity", mo["argmax_sensitivity"]],
                            ["argmax specificity", mo["argmax_specificity"]], ["melanomas", mo["n_mel"]]],
                           ["melanoma operating point", ""])
    if t.get("status_counts"):
        body += table_html([[k, v] for k, v in t["status_counts"].items()], ["status", "images"])
    if not bundle.trust:
        body += "<p class='muted'>This bundle has no trust part (made before `dermfuse release`).</p>"
    sections.append(Section("When not to trust it", body))
    if "subgroups" in metrics:
        from ..evaluation.report import subgroup_section

        sections.append(subgroup_section(metrics["subgroups"]))
    synthetic = bundle.info.get("training_data", {}).get("synthetic")
    write_report(out / "report.html", f"dermfuse evaluate: {bundle.model_id}", sections,
                 subtitle=f"data: {data_path} ({metrics.get('rows')})",
                 banners=(["SYNTHETIC model: trained on synthetic data; says nothing about real lesions."]
                          if synthetic else []) +
                         ([SYNTHETIC_BANNER] if synthetic_data else []))
