"""Score an exported bundle (fp32 and int8 graphs) and its PyTorch bundle on the same rows,
e.g. a holdout run's test part: what int8 costs in accuracy and balanced accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.bundle import load_bundle
from ..data.cache import build_cache
from ..evaluation.metrics import balanced_accuracy

__all__ = ["score_export"]


def score_export(bundle_path: str | Path, export_dir: str | Path, data_path: str | Path,
                 split_file: str | Path | None = None, part: str = "test", progress: bool = False) -> dict[str, Any]:
    """Accuracy and balanced accuracy of PyTorch, ONNX fp32 and ONNX int8 on the rows of
    ``data_path`` that ``split_file`` puts in ``part`` (all rows without a split file), with
    the int8 - fp32 differences and the graph file sizes."""
    from ..runs.cohort import load_cohort
    from ..runs.evaluate import select_part
    from ..inference.predict import predict_arrays
    from .runtime import OnnxPredictor

    bundle = load_bundle(bundle_path)
    cohort = load_cohort(data_path, progress=progress)
    table = cohort.table
    if split_file is not None:
        table = table.iloc[select_part(table, split_file, part)].reset_index(drop=True)
    y = table["label"].map({c: i for i, c in enumerate(bundle.classes)}).to_numpy(np.int64)
    images = build_cache(table, size=bundle.image_size, method=bundle.resize_method, progress=progress).images
    meta = bundle.encode_table(table)
    export_dir = Path(export_dir)
    spec = json.loads((export_dir / "export.json").read_text())
    probs = {"pytorch": predict_arrays(bundle, images, meta, progress=progress),
             "onnx_fp32": OnnxPredictor(export_dir).predict(images, meta),
             "onnx_int8": OnnxPredictor(export_dir, int8=True).predict(images, meta)}
    scores = {k: {"accuracy": float((p.argmax(1) == y).mean()),
                  "balanced_accuracy": float(balanced_accuracy(y, p.argmax(1)))} for k, p in probs.items()}
    g = spec["graphs"]["classifier"]
    sizes = {g["file"]: (export_dir / g["file"]).stat().st_size, g["int8"]: (export_dir / g["int8"]).stat().st_size}
    if "cam" in spec["graphs"]:
        c = spec["graphs"]["cam"]
        sizes.update({c["file"]: (export_dir / c["file"]).stat().st_size,
                      c["int8"]: (export_dir / c["int8"]).stat().st_size})
    fp32, int8 = probs["onnx_fp32"], probs["onnx_int8"]
    return {"model_id": bundle.model_id, "rows": int(len(y)), "part": part if split_file else "all",
            "split_file": None if split_file is None else str(split_file), "scores": scores,
            "int8_minus_fp32": {k: scores["onnx_int8"][k] - scores["onnx_fp32"][k]
                                for k in ("accuracy", "balanced_accuracy")},
            "int8_top_class_agreement": float((fp32.argmax(1) == int8.argmax(1)).mean()),
            "fp32_max_abs_diff_vs_pytorch": float(np.abs(fp32 - probs["pytorch"]).max()),
            "file_bytes": sizes}
