"""The CSV tables (and summary.json) that `collect` writes into a cv / ablate run directory:
summary.csv (one row per variant), per_fold.csv, ablation.csv and gap.csv where they apply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..evaluation.metrics import BOOTSTRAP_METRICS
from ..io import atomic_write, atomic_write_text
from .cv_stats import METRICS

__all__ = ["write_tables"]


def write_tables(run_dir: Path, result: dict[str, Any]) -> None:
    """Write summary.csv, per_fold.csv, ablation.csv / gap.csv (where they apply) and summary.json."""
    def save_csv(df: pd.DataFrame, name: str) -> None:
        atomic_write(run_dir / name, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6f"))

    rows = []
    for v in result["variants"]:
        name, pooled = v["name"], result["pooled"][v["name"]] or {}
        row = {"variant": name, "model": v["model"], "input": v["input"], "metadata": v["use_meta"],
               "split": v["split"], "n_folds": result["stats"][name]["accuracy"]["n"]}
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = result["stats"][name][m]["mean"], result["stats"][name][m]["std"]
        row.update({f"pooled_{m}": pooled.get(m) for m in METRICS})
        row["pooled_n_images"] = pooled.get("n_images")
        rows.append(row)
    save_csv(pd.DataFrame(rows), "summary.csv")
    save_csv(pd.DataFrame(result["per_fold"], columns=["variant", "fold", *METRICS, "n_images", "seconds"]),
             "per_fold.csv")
    if "ablation" in result:
        ab = result["ablation"]
        flat = [{"variant": r["variant"], "reference": ab["reference"], "n_pairs": r["n_pairs"],
                 **{f"{m}_diff_{s}": r[m][s] for m in METRICS for s in ("mean", "std")}} for r in ab["rows"]]
        boot = {r["variant"]: r for r in (ab.get("bootstrap") or {}).get("rows", [])}
        for row in flat:
            b = boot.get(row["variant"], {})
            for m in BOOTSTRAP_METRICS:
                for key, col in (("diff", "pooled_diff"), ("low", "ci_low"), ("high", "ci_high")):
                    row[f"{m}_{col}"] = b[m][key] if m in b else None
        save_csv(pd.DataFrame(flat), "ablation.csv")
    if result["gap"]:
        save_csv(pd.DataFrame([{"variant": r["variant"], "metric": r["metric"],
                                "grouped_mean": r["grouped"]["mean"], "grouped_std": r["grouped"]["std"],
                                "image_mean": r["image"]["mean"], "image_std": r["image"]["std"],
                                "inflation": r["inflation"], "pooled_grouped": r["pooled_grouped"],
                                "pooled_image": r["pooled_image"], "pooled_inflation": r["pooled_inflation"],
                                "pooled_inflation_ci_low": r.get("pooled_inflation_low"),
                                "pooled_inflation_ci_high": r.get("pooled_inflation_high"),
                                "pooled_n_images": r.get("pooled_n_images")}
                               for r in result["gap"]]), "gap.csv")
    atomic_write_text(run_dir / "summary.json", json.dumps(result, indent=2, default=str))
