"""Data sets, caches and finished runs: data (check, plot, augment, synth), calibrate, release,
demo, models, cache, explain-eval (dermfuse.data, dermfuse.runs). Each command has
``add_<cmd>(subparsers)`` and ``run_<cmd>(args) -> exit code``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import TrainConfig, choices
from .output import err, out, print_holdout
from .parser import add_format_options, image_size_arg


def add_data(sub) -> None:
    data = sub.add_parser("data", help="inspect, plot or generate data sets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("check", help="format, counts, completeness and the cleaning report")
    p.add_argument("path")
    add_format_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--report", help="also save the cleaning report JSON here")
    p.add_argument("--no-image-check", action="store_true", help="skip decoding images")
    p = dsub.add_parser("plot", help="class-distribution figure (the paper's Fig. 4)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    add_format_options(p)
    p = dsub.add_parser("augment", help="figure of augmented samples (the paper's recipe)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--image-size", type=image_size_arg, default=128, metavar="S|HxW",
                   help="the size the samples are resized to first, as a run's data.image_size (default 128)")
    add_format_options(p)
    p = dsub.add_parser("synth", help="write a SYNTHETIC HAM10000-layout data set")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defects", action="store_true", help="plant a few defects for the cleaning path")


def run_data(args: argparse.Namespace) -> int:
    from ..data.clean import clean, summarize
    from ..data.formats import read_dataset

    if args.data_command == "synth":
        from ..data.synth import make_synthetic

        path = make_synthetic(args.out, n=args.n, seed=args.seed, defects=args.defects)
        err.print(f"wrote SYNTHETIC data set ({args.n} images) to {path}")
        return 0
    read = read_dataset(args.path, format=args.format, column_map=args.column_map)
    check = not getattr(args, "no_image_check", False)
    table, report = clean(read, check_images=check, progress=not args.quiet)
    summary = summarize(table, report, read.format, raw=read.table)
    steps = {"check": _data_check, "plot": _data_plot, "augment": _data_augment}
    if args.data_command not in steps:
        raise AssertionError(args.data_command)
    return steps[args.data_command](args, table, report, summary)


def _data_check(args: argparse.Namespace, table, report, summary: dict) -> int:
    if args.report:
        report.save_json(args.report)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, report)
    return 0


def _data_plot(args: argparse.Namespace, table, report, summary: dict) -> int:
    from ..evaluation.plots import plot_class_distribution, save_figure

    save_figure(plot_class_distribution(summary["classes"], title=f"{Path(args.path).name}: images per class"), args.out)
    err.print(f"wrote {args.out}")
    return 0


def _data_augment(args: argparse.Namespace, table, report, summary: dict) -> int:
    import numpy as np

    from ..data.cache import load_image, resize_image
    from ..evaluation.plots import save_figure
    from ..preprocess import plot_augmentations

    rows = table.groupby("label").head(1).head(args.n)
    imgs = np.stack([resize_image(load_image(p), args.image_size) for p in rows["path"]])
    save_figure(plot_augmentations(imgs), args.out)
    err.print(f"wrote {args.out}")
    return 0


def _print_summary(summary: dict, report) -> None:
    from rich.table import Table

    t = Table(title=f"{summary['format']} data set")
    t.add_column("")
    t.add_column("value", justify="right")
    for k in ("images", "lesions", "patients"):
        t.add_row(k, str(summary[k]))
    if "after_cleaning" in summary:
        t.add_row("images after cleaning", str(summary["after_cleaning"]["images"]))
    for k, v in summary["missing"].items():
        t.add_row(f"missing {k}", str(v))
    out.print(t)
    c = Table(title="images per class")
    c.add_column("class")
    c.add_column("images", justify="right")
    for k, v in sorted(summary["classes"].items(), key=lambda kv: -kv[1]):
        c.add_row(k, str(v))
    out.print(c)
    out.print(report.render())


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit prior shift + temperature on a finished run's validation part")
    p.add_argument("run_dir")
    p.add_argument("--mode", default="prior-temperature",
                   choices=[m for m in choices(TrainConfig, "calibration") if m != "none"])


def run_calibrate(args: argparse.Namespace) -> int:
    from ..runs.holdout import calibrate_run

    m = calibrate_run(args.run_dir, mode=args.mode, progress=not args.quiet)
    c = m["calibration"]
    err.print(f"calibration: prior shift {c['prior_shift']:.2f}, temperature {c['temperature']:.3f} "
              f"(fitted on {c['fitted_on']['n']} validation images)")
    print_holdout("uncalibrated", m["uncalibrated"])
    print_holdout("calibrated", m)
    err.print(f"report: {Path(args.run_dir) / 'report.html'}\nbundle: {Path(args.run_dir) / 'bundle'}")
    return 0


def add_release(sub) -> None:
    p = sub.add_parser("release", help="fit the trust part and the model card on a finished train run; "
                                       "write a releasable bundle")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--holdout", metavar="HOLDOUT_RUN_DIR",
                   help="the recipe's holdout run: its test predictions give the card's held-out metrics")
    p.add_argument("--data", help="data set path (default: the run config's data.path)")
    p.add_argument("--coverage", type=float, default=0.90, help="selective prediction: share of validation "
                                                               "rows answered (default 0.90)")
    p.add_argument("--mel-sensitivity", type=float, default=0.85, help="melanoma operating point: target "
                                                                       "sensitivity on validation rows (0.85)")
    p.add_argument("--ood-keep", type=float, default=0.95, help="OOD threshold keeps this share of validation "
                                                                "images (0.95)")
    p.add_argument("--max-train", type=int, help="fit the OOD statistics on at most this many training rows")
    p.add_argument("--train-command", help="the exact training command, for the card")
    p.add_argument("--commit", help="the git commit that trained it, for the card")
    p.add_argument("--json", action="store_true")


def run_release(args: argparse.Namespace) -> int:
    from ..runs.release import release_run

    r = release_run(args.run_dir, args.out, holdout=args.holdout, data=args.data, coverage=args.coverage,
                    mel_sensitivity=args.mel_sensitivity, ood_keep=args.ood_keep, max_train=args.max_train,
                    train_command=args.train_command, commit=args.commit, progress=not args.quiet)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return 0
    t = r["trust"]
    err.print(f"released bundle {r['model_id']} -> {r['bundle']}")
    err.print(f"selective threshold {t['selective']['threshold']:.4f} (coverage {t['selective']['achieved']:.3f} "
              f"of validation); melanoma threshold {t['melanoma']['threshold']:.4f} (val sensitivity "
              f"{t['melanoma']['sensitivity']:.3f}, specificity {t['melanoma']['specificity']:.3f})"
              if t.get("melanoma") else "")
    o = r["ood_measured"]
    err.print(f"OOD {t['ood']['method']} threshold {t['ood']['threshold']:.3f}: AUROC all {o['auroc_all']:.4f}, "
              f"synthetic {o['auroc_synthetic']:.4f}, skimage {o['auroc_skimage']}")
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on synthetic data (minutes on a CPU)")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--n", type=int, default=1000, help="synthetic images (default 1000)")
    p.add_argument("--epochs", type=int, default=10, help="epochs at most per model (default 10)")
    p.add_argument("--seed", type=int, default=0)


def run_demo(args: argparse.Namespace) -> int:
    from ..runs.demo import run_demo as demo

    demo(args.out, n=args.n, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    return 0


def add_models(sub) -> None:
    sub.add_parser("models", help="list registered models")


def run_models(args: argparse.Namespace) -> int:
    from ..models import list_models, model_spec

    for name in list_models():
        s = model_spec(name)
        out.print(f"{name:20s} {s.default_size or '-':>5} px  {s.description}")
    return 0


def add_cache(sub) -> None:
    p = sub.add_parser("cache", help="size of the image and heatmap caches; --clear empties them")
    p.add_argument("--clear", action="store_true", help="delete the cached images, heatmaps and image checks")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run_cache(args: argparse.Namespace) -> int:
    from ..data.cache import cache_usage, clear_cache

    usage = clear_cache() if args.clear else cache_usage()
    if args.json:
        print(json.dumps({**usage, "cleared": bool(args.clear)}, indent=2))
        return 0
    for part, u in usage["parts"].items():
        out.print(f"{part:13s} {u['files']:6d} files {u['bytes'] / 1e6:10.1f} MB")
    out.print(f"{'total':13s} {'':12s} {usage['bytes'] / 1e6:10.1f} MB  in {usage['root']}", highlight=False)
    if args.clear:
        err.print(f"cleared {usage['bytes'] / 1e6:.1f} MB from {usage['root']}")
    return 0


def add_explain_eval(sub) -> None:
    p = sub.add_parser("explain-eval", help="are a bundle's heatmaps faithful, on the lesion, free of a border frame?")
    p.add_argument("bundle")
    p.add_argument("data")
    add_format_options(p)
    p.add_argument("--split-file", help="a run's split.csv: use only the rows it puts in --part")
    p.add_argument("--part", default="test", help="with --split-file: train, val or test (default test)")
    p.add_argument("--methods", default="gradcam,gradcam++,layercam,hirescam",
                   help="comma-separated CAM methods (default: %(default)s); a random baseline is always added")
    p.add_argument("--n", type=int, default=200, help="images sampled from those rows (default 200; 0 = all)")
    p.add_argument("--steps", type=int, default=16, help="points of the deletion / insertion curves (default 16)")
    p.add_argument("--fill", default="mean", choices=["mean", "blur", "zero"],
                   help="what a removed pixel becomes (default: the image's mean colour)")
    p.add_argument("--band", type=float, default=0.1, help="border band width, share of each side (default 0.1)")
    p.add_argument("--pad", type=int, help="reflect padding in px for the border check (default: side / 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write explain_eval.json, explain_eval.md and plots/ here")
    p.add_argument("--json", action="store_true", help="the result as JSON on stdout")


def run_explain_eval(args: argparse.Namespace) -> int:
    from ..runs.explain_eval import explain_eval, render_markdown

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = explain_eval(args.bundle, args.data, split_file=args.split_file, part=args.part, methods=methods,
                       n_images=args.n or None, steps=args.steps, fill=args.fill, band=args.band, pad=args.pad,
                       seed=args.seed, format=args.format, out=args.out, progress=not args.quiet)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        out.print(render_markdown(res), markup=False, highlight=False)
    if args.out:
        err.print(f"wrote {Path(args.out) / 'explain_eval.json'} and {Path(args.out) / 'plots'}")
    return 0
