"""The report of a ``dermfuse tune`` study: trials table (CSV and HTML), optimisation history
and parameter importances (matplotlib), in the run folder."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..io import atomic_write
from ..evaluation.plots import save_figure
from ..evaluation.report import Section, figure_html, json_block, table_html, write_report

__all__ = ["trials_frame", "plot_history", "plot_importances", "param_importances", "write_tune_report"]


def trials_frame(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, value, every parameter, worker, epochs, seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **{f"param {k}": v for k, v in t.params.items()},
                     "worker": t.user_attrs.get("worker"), "epochs_run": t.user_attrs.get("epochs_run"),
                     "best_epoch": t.user_attrs.get("best_epoch"),
                     "seconds": None if t.duration is None else t.duration.total_seconds()})
    return pd.DataFrame(rows)


def plot_history(trials: pd.DataFrame, objective: str = "validation balanced accuracy") -> Figure:
    """Objective per finished trial (pruned ones hollow) and the best so far."""
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    done = trials[trials["state"].isin(["COMPLETE", "PRUNED"])].sort_values("number") if len(trials) else trials
    if len(done):
        for state, style in (("COMPLETE", dict(color="tab:blue")), ("PRUNED", dict(facecolors="none",
                                                                                   edgecolors="tab:gray"))):
            part = done[done["state"] == state]
            ax.scatter(part["number"], part["value"], label=state.lower(), s=22, **style)
        comp = done[done["state"] == "COMPLETE"]
        if len(comp):
            ax.step(comp["number"], np.maximum.accumulate(comp["value"].to_numpy(float)), where="post",
                    color="tab:red", label="best so far")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("Optimisation history")
    return fig


def param_importances(study: Any) -> dict[str, float]:
    """Optuna's default importance evaluator over the completed trials ({} with fewer
    than two)."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few trials: "importances will be equal"
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def plot_importances(importances: dict[str, float]) -> Figure:
    """Horizontal bars, most important on top."""
    fig = Figure(figsize=(6.4, 0.5 + 0.45 * max(1, len(importances))), layout="constrained")
    ax = fig.subplots()
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (Optuna's default evaluator, sums to 1)")
    else:
        ax.text(0.5, 0.5, "needs two completed trials that differ", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Parameter importances")
    return fig


def write_tune_report(study: Any, out: str | Path) -> Path:
    """trials.csv, trials.html (with both plots) and plots/*.png in ``out``; returns trials.html."""
    out = Path(out)
    trials = trials_frame(study)
    atomic_write(out / "trials.csv", lambda tmp: trials.to_csv(tmp, index=False, float_format="%.6g"))
    importances = param_importances(study)
    figures = {"optimization_history": plot_history(trials), "param_importances": plot_importances(importances)}
    sections = []
    for name, fig in figures.items():
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        save_figure(fig, out / "plots" / f"{name}.png")
        sections.append(Section(name.replace("_", " ").capitalize(), figure_html(png.getvalue())))
    header = list(trials.columns)
    rows = [[("" if (isinstance(v, float) and np.isnan(v)) else v) for v in r] for r in trials.itertuples(index=False)]
    sections.append(Section("Trials", table_html(rows, header)))
    sections.append(Section("Search", json_block({k: study.user_attrs.get(k) for k in ("objective", "space", "split")})))
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    path = out / "trials.html"
    write_report(path, f"dermfuse tune: study {study.study_name}",
                 sections, subtitle=", ".join(f"{n} {s.lower()}" for s, n in states.items()))
    return path
