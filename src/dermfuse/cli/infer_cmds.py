"""Commands that use a bundle: evaluate, predict, card, cam, export, serve (dermfuse.inference,
dermfuse.runs.holdout, dermfuse.export, dermfuse.serve). Each has ``add_<cmd>(subparsers)``
and ``run_<cmd>(args) -> exit code``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.markup import escape

from ..errors import InputError
from .output import err, out
from .parser import UsageError, add_bundle_options, add_format_options, split_bundle


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a bundle (default: the released model) on a data set",
                       description="dermfuse evaluate DATA (the released model) | evaluate BUNDLE DATA | "
                                   "evaluate --bundle BUNDLE DATA")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] DATA", help="one path: the data set; two: bundle, data set")
    add_bundle_options(p)
    add_format_options(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="write metrics.json, predictions.csv, risk_coverage.png and report.html here")
    p.add_argument("--split-file", help="a run's split.csv: score only the rows it puts in --part")
    p.add_argument("--part", default="test", help="with --split-file: train, val or test (default test)")
    p.add_argument("--by", metavar="KEY,...",
                   help="also score subgroups: any of sex,age_band,site (with --out: report.html shows them)")


def run_evaluate(args: argparse.Namespace) -> int:
    from ..runs.holdout import evaluate_bundle

    bundle_path, (data,) = split_bundle(args, 1, "DATA")
    m = evaluate_bundle(bundle_path, data, format=args.format, progress=not args.quiet, out=args.out,
                        split_file=args.split_file, part=args.part, column_map=args.column_map,
                        operating_point=args.operating_point, device=args.device, by=args.by)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    from ..constants import HEADLINE_METRICS

    for k in HEADLINE_METRICS:
        if k in m:
            out.print(f"{k:22s} {_num(m[k])}")
    if m.get("rows_seen_in_training"):
        out.print(f"{'rows_seen_in_training':22s} {m['rows_seen_in_training']} (optimistic: see the warning)")
    for line in _trust_lines(m.get("trust") or {}):
        out.print(line)
    if "subgroups" in m:
        from ..evaluation.subgroups import render_subgroups

        out.print(render_subgroups(m["subgroups"]), markup=False, highlight=False, soft_wrap=True)
    _print_metadata_problems(m)
    return 0


def _num(v: object) -> object:
    """A metric for the text output: 4 decimals (--json keeps every digit)."""
    return f"{v:.4f}" if isinstance(v, float) else v


def _trust_lines(t: dict) -> list[str]:
    lines = []
    if t.get("aurc") is not None:
        lines.append(f"{'risk_coverage_area':22s} {t['aurc']:.4f}")
    s = t.get("selective")
    if s:
        lines.append(f"selective: threshold {s['threshold']:.4f} answers {s['coverage']:.3f} of these rows "
                     f"(target {s['target_coverage']:.2f}): accuracy {s['accuracy']:.4f}, balanced accuracy "
                     f"{s['balanced_accuracy']:.4f} (all rows: {s['accuracy_all']:.4f}, {s['balanced_accuracy_all']:.4f})")
    mo = t.get("melanoma_operating_point")
    if mo:
        lines.append(f"melanoma operating point: P(mel) >= {mo['threshold']:.4f}: sensitivity {_num(mo['sensitivity'])}, "
                     f"specificity {_num(mo['specificity'])} (argmax: {_num(mo['argmax_sensitivity'])}, "
                     f"{_num(mo['argmax_specificity'])})")
    if t.get("status_counts"):
        lines.append(f"status: {t['status_counts']}")
    return lines


def _print_metadata_problems(m: dict) -> None:
    """evaluate (text): metadata values no vocabulary knows, and values the bundle never saw."""
    for key, what in (("unrecognised_metadata", "not recognised (read as unknown)"),
                      ("unseen_categories", "not among the bundle's levels (encoded as unknown)")):
        for field, values in (m.get(key) or {}).items():
            if values:
                named = ", ".join(f"{v[:80]!r} ({n})" for v, n in sorted(values.items(), key=lambda kv: -kv[1]))
                out.print(f"{field} {what}: {named}", highlight=False, soft_wrap=True)


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify an image, a folder of images or a CSV of images",
                       description="dermfuse predict IMAGE (the released model) | predict BUNDLE IMAGE | "
                                   "predict --bundle BUNDLE IMAGE. IMAGE may be a folder of images or a CSV "
                                   "with a column image (or path) and optional age, sex, site columns: then "
                                   "the answers go to a predictions CSV (--out, default stdout).")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] IMAGE", help="one path: the input; two: bundle, input")
    p.usage = "dermfuse predict [options] [BUNDLE] IMAGE"  # argparse would repeat the pair: one input only
    add_bundle_options(p)
    p.add_argument("--age")
    p.add_argument("--sex")
    p.add_argument("--site")
    p.add_argument("--json", action="store_true")
    p.add_argument("--heatmap", help="save the heatmap overlay (PNG) here")
    p.add_argument("--explain", metavar="CLASS", help="the class whose heatmap to draw (default: the answer)")
    p.add_argument("--out", help="folder/CSV input: write the predictions CSV here")


def _load(bundle_path: str | None, device: str = "cpu"):
    from ..inference.bundle import load_bundle
    from ..inference.device import resolve_device
    from ..released import resolve_bundle

    return load_bundle(resolve_bundle(bundle_path), device=resolve_device(device))


def run_predict(args: argparse.Namespace) -> int:
    bundle_path, (source,) = split_bundle(args, 1, "IMAGE (a file, a folder of images or a CSV)")
    bundle = _load(bundle_path, args.device)
    if Path(source).is_dir() or Path(source).suffix.lower() == ".csv":
        return _predict_many(args, bundle, source)
    return _predict_image(args, bundle, source)


def _predict_many(args: argparse.Namespace, bundle, source: str) -> int:
    """A folder or a CSV of images: a predictions table (JSON, --out CSV, or CSV on stdout)."""
    from ..inference.predict import predict_table, read_inputs
    from ..inference.predictor import Predictor

    if args.heatmap or args.explain:
        raise UsageError("--heatmap and --explain are for one image; use `dermfuse cam` for many")
    table = predict_table(Predictor.from_bundle(bundle), read_inputs(source),
                          operating_point=args.operating_point, progress=not args.quiet)
    if args.out:
        table.to_csv(args.out, index=False)
    if args.json:  # strict JSON: null, never NaN, for the empty answers of a bad row
        records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        print(json.dumps({"model_id": bundle.model_id, "predictions": records}, indent=2, allow_nan=False))
    elif not args.out:
        sys.stdout.write(table.to_csv(index=False))
    counts = ", ".join(f"{k} {int(v)}" for k, v in table["status"].value_counts().items())
    err.print(f"{len(table)} predictions ({counts})" + (f" -> {args.out}" if args.out else ""), highlight=False)
    failed = table[table["status"] == "error"]
    for message in failed["error"].head(10):
        err.print(f"[yellow]skipped[/yellow] {escape(message)}", highlight=False, soft_wrap=True)
    if len(failed) > 10:
        err.print(f"... and {len(failed) - 10} more rows with status error", highlight=False)
    return 1 if len(failed) else 0  # every good row answered; 1 says some were not


def _predict_image(args: argparse.Namespace, bundle, source: str) -> int:
    """One image: JSON, or a table of probabilities under the verdict (and --heatmap's PNG)."""
    from ..inference.predict import predict_one

    pred = predict_one(bundle, source, args.age, args.sex, args.site,
                       explain=bool(args.heatmap) or bool(args.explain) or not args.json,
                       explain_class=args.explain, operating_point=args.operating_point)
    if args.heatmap:
        _save_heatmap(pred, bundle, args.heatmap)
    if args.json:
        print(json.dumps(pred.to_dict(), indent=2))
        return 0
    from rich.table import Table

    verdict = {"ok": pred.top_class, "uncertain": f"UNCERTAIN - refer (tentatively {pred.top_class})",
               "out_of_distribution": "NOT A DERMOSCOPIC LESION IMAGE like the training ones: no class; "
                                      "do not rely on these probabilities"}[pred.status]
    t = Table(title=f"{Path(source).name} — {verdict}")
    t.add_column("class")
    t.add_column("probability", justify="right")
    for c, p in sorted(pred.probabilities.items(), key=lambda kv: -kv[1]):
        t.add_row(c, f"{p:.3f}")
    out.print(t)
    if args.heatmap:
        err.print(f"heatmap overlay ({pred.explained_class}): {args.heatmap}")
    err.print(f"[dim]model {bundle.model_id}; research use only; not a diagnosis.[/dim]")
    return 0


def _save_heatmap(pred, bundle, path: str) -> None:
    from PIL import Image

    if pred.overlay is None:
        raise InputError(f"this bundle ({bundle.info['model']['name']}) has no image branch: no heatmap to save")
    try:
        Image.fromarray(pred.overlay).save(path)
    except (ValueError, OSError) as e:
        raise InputError(f"--heatmap {path}: cannot write a PNG there ({e})") from None


def add_card(sub) -> None:
    p = sub.add_parser("card", help="the model card of a bundle (default: the released model)")
    p.add_argument("--bundle", help="bundle directory (default: the released model)")
    p.add_argument("--json", action="store_true")


def run_card(args: argparse.Namespace) -> int:
    from ..inference.bundle import read_bundle_info
    from ..inference.card import model_card, render_card
    from ..released import resolve_bundle

    card = model_card(read_bundle_info(resolve_bundle(args.bundle)))
    if args.json:
        print(json.dumps(card, indent=2))
    else:
        sys.stdout.write(render_card(card))
    return 0


def add_cam(sub) -> None:
    p = sub.add_parser("cam", help="original | heatmap | overlay figures for images",
                       description="dermfuse cam IMAGE... (the released model) | cam BUNDLE IMAGE... | "
                                   "cam --bundle BUNDLE IMAGE...; the first path is the bundle when it is a "
                                   "directory holding bundle.json")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] IMAGE")
    p.add_argument("--bundle", help="bundle directory (default: the released model)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=0.4, help="heatmap weight in the overlay, 0..1 (default 0.4)")
    p.add_argument("--explain", metavar="CLASS", help="the class to explain (default: each image's answer)")


def run_cam(args: argparse.Namespace) -> int:
    from ..inference.figures import cam_figures

    if not 0.0 <= args.alpha <= 1.0:  # nan fails too
        raise UsageError(f"--alpha {args.alpha}: expected the heatmap's weight in the overlay, a number in 0..1")
    paths = list(args.paths)
    bundle_path = args.bundle
    if bundle_path is None and len(paths) > 1 and (Path(paths[0]) / "bundle.json").is_file():
        bundle_path, paths = paths[0], paths[1:]
    for path in cam_figures(bundle_path, paths, args.out, alpha=args.alpha, explain_class=args.explain,
                            device=args.device):
        err.print(f"wrote {path}")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a bundle for runtimes without PyTorch (ONNX)",
                       description="dermfuse export --out DIR (the released model) | export BUNDLE --out DIR")
    p.add_argument("bundle", nargs="?", help="bundle directory (default: the released model)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="folder for the .onnx graph(s) and export.json")
    p.add_argument("--int8", action="store_true", help="also write 8-bit (onnxruntime dynamic quantisation) graphs")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--json", action="store_true", help="print export.json's summary on stdout")


def run_export(args: argparse.Namespace) -> int:
    from ..export.onnx import export_onnx
    from ..released import resolve_bundle

    res = export_onnx(resolve_bundle(args.bundle), args.out, int8=args.int8, opset=args.opset, progress=not args.quiet)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for f in res["files"]:
            err.print(f"wrote {Path(args.out) / f}")
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page for a bundle (default: the released model)",
                       description="dermfuse serve (the released model) | serve BUNDLE | serve --bundle BUNDLE")
    p.add_argument("paths", nargs="*", metavar="BUNDLE")
    add_bundle_options(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)


def run_serve(args: argparse.Namespace) -> int:
    from ..serve.app import run_server

    bundle_path, _ = split_bundle(args, 0, "nothing else")
    run_server(bundle_path, host=args.host, port=args.port, operating_point=args.operating_point,
               device=args.device)
    return 0
