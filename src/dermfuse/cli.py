"""Command line. It only parses: every command calls a library function that is also
usable from Python. Errors that dermfuse raises on purpose print as ``error: …`` with exit
code 2 and no traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import DermfuseError

__all__ = ["main", "build_parser"]

out = Console()
err = Console(stderr=True)


def _column_map_arg(text: str) -> dict[str, str]:
    """``image_id=isic_id,label=diagnosis,...`` -> {"image_id": "isic_id", ...} (--column-map)."""
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if p.count("=") != 1 or not all(s.strip() for s in p.split("="))]
    if not pairs or bad:
        raise argparse.ArgumentTypeError(
            f"expected NAME=COLUMN pairs separated by commas, e.g. image_id=isic_id,label=diagnosis,age=age_years; "
            f"could not read {', '.join(map(repr, bad)) or repr(text)}")
    return {k.strip(): v.strip() for k, v in (p.split("=") for p in pairs)}


def _add_format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", help="data set format (default: detected from the CSV columns)")
    p.add_argument("--column-map", type=_column_map_arg, metavar="NAME=COLUMN,...",
                   help="format generic: which CSV column holds image_id and label (required) and lesion_id, "
                        "patient_id, age, sex, site (optional), e.g. image_id=isic_id,label=diagnosis")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (sections data/model/train)")
    p.add_argument("--out", help="run directory (default runs/<model>)")
    _add_format_options(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int, help="input size in px (default: the model's, 128 for the paper's)")
    p.add_argument("--split", choices=["lesion", "patient", "image"],
                   help="lesion/patient-grouped (default) or image-level (leaky)")
    p.add_argument("--balance", choices=["weighted-loss", "oversample", "undersample", "none"])
    p.add_argument("--input", choices=["image", "heatmap", "overlay", "masked"],
                   help="what the image branch sees (heatmap = the paper's method)")
    p.add_argument("--image-backbone", help="ft_multicnn: a registered backbone instead of the three conv blocks")
    p.add_argument("--weights", help="local .safetensors/.pth state dict for the backbone")
    p.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    p.add_argument("--no-meta", action="store_true", help="ft_multicnn without the metadata branch")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config value, e.g. --set train.schedule=cosine (repeatable)")


def _run_config(args: argparse.Namespace, data: str, model: str | None):
    from .config import apply_overrides, load_config

    cfg = load_config(args.config)
    cfg.data.path = data
    if model:
        cfg.model.name = model
    simple = {
        "data.format": args.format, "data.column_map": args.column_map,
        "data.image_size": args.image_size, "data.split": args.split,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "train.balance": args.balance, "model.input": args.input,
        "model.image_backbone": args.image_backbone, "model.weights": args.weights,
        "train.device": args.device,
    }
    apply_overrides(cfg, {k: v for k, v in simple.items() if v is not None})
    if args.no_pretrained:
        cfg.model.pretrained = False
    if args.no_meta:
        cfg.model.use_meta = False
    if args.seed is not None:
        cfg.seed = cfg.train.seed = args.seed
    apply_overrides(cfg, args.set)
    if args.out:
        cfg.out = args.out
    elif cfg.out == "runs/latest":  # the default: one folder per model
        cfg.out = f"runs/{cfg.model.name}"
    return cfg


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dermfuse", description="Multimodal skin-lesion classification with activation heatmaps (research use only).")
    ap.add_argument("--version", action="version", version=f"dermfuse {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect, plot or generate data sets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("check", help="format, counts, completeness and the cleaning report")
    p.add_argument("path")
    _add_format_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--report", help="also save the cleaning report JSON here")
    p.add_argument("--no-image-check", action="store_true", help="skip decoding images")
    p = dsub.add_parser("plot", help="class-distribution figure (the paper's Fig. 4)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    _add_format_options(p)
    p = dsub.add_parser("augment", help="figure of augmented samples (the paper's recipe)")
    p.add_argument("path")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=4)
    _add_format_options(p)
    p = dsub.add_parser("synth", help="write a SYNTHETIC HAM10000-layout data set")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defects", action="store_true", help="plant a few defects for the cleaning path")

    p = sub.add_parser("train", help="train one model on a lesion-grouped holdout and write a bundle")
    p.add_argument("data")
    p.add_argument("--model", help="registered model name (see `dermfuse models`)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--members", type=int, help="train a seed ensemble of this many models (train.members)")
    p.add_argument("--member", type=int, metavar="K",
                   help="with --members N: train member K (0 to N-1) alone and stop; jobs for several "
                        "members can run at once, then `--members N --resume` builds the ensemble")
    _add_train_options(p)

    p = sub.add_parser("calibrate", help="fit prior shift + temperature on a finished run's validation part")
    p.add_argument("run_dir")
    p.add_argument("--mode", default="prior-temperature", choices=["temperature", "prior-temperature"])

    p = sub.add_parser("evaluate", help="score a bundle on a data set")
    p.add_argument("bundle")
    p.add_argument("data")
    _add_format_options(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="write metrics.json and predictions.csv here")
    p.add_argument("--split-file", help="a run's split.csv: score only the rows it puts in --part")
    p.add_argument("--part", default="test", help="with --split-file: train, val or test (default test)")

    p = sub.add_parser("predict", help="classify one image with its metadata")
    p.add_argument("bundle")
    p.add_argument("image")
    p.add_argument("--age")
    p.add_argument("--sex")
    p.add_argument("--site")
    p.add_argument("--json", action="store_true")
    p.add_argument("--heatmap", help="save the heatmap overlay (PNG) here")

    p = sub.add_parser("demo", help="the whole pipeline on synthetic data (minutes on a CPU)")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)

    sub.add_parser("models", help="list registered models")

    p = sub.add_parser("cam", help="original | heatmap | overlay figures for images")
    p.add_argument("bundle")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=0.4)

    # --- cv / ablate (dermfuse.cv, dermfuse.ablate) ------------------------------------
    p = sub.add_parser("cv", help="k-fold cross-validation of several models on the same folds")
    p.add_argument("data", nargs="?", help="data set (omit with --collect)")
    p.add_argument("--models", default="cnn,resnet50,inception_v3,ft_multicnn:heatmap",
                   help="comma-separated NAME or NAME:INPUT (default: %(default)s)")
    p.add_argument("--folds", type=int, help="number of folds (default: data.folds, 5)")
    p.add_argument("--fold", type=int, help="run fold K only, as an independent job (no report)")
    p.add_argument("--protocol-gap", action="store_true",
                   help="also run each model on image-level folds and report how much that inflates the metrics")
    p.add_argument("--collect", metavar="RUN_DIR", help="merge the finished folds of RUN_DIR into its report")
    p.add_argument("--resume", action="store_true", help="continue unfinished folds from their checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each fold's checkpoint.pt when it finishes")
    _add_train_options(p)
    p = sub.add_parser("ablate", help="FT-MultiCNN ablation: input {heatmap,image,overlay} x metadata {with,without}")
    p.add_argument("data", nargs="?", help="data set (omit with --collect)")
    p.add_argument("--folds", type=int, help="number of folds (default: data.folds, 5)")
    p.add_argument("--fold", type=int, help="run fold K only, as an independent job (no report)")
    p.add_argument("--collect", metavar="RUN_DIR", help="merge the finished folds of RUN_DIR into its report")
    p.add_argument("--resume", action="store_true", help="continue unfinished folds from their checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each fold's checkpoint.pt when it finishes")
    p.add_argument("--variants", metavar="NAME,...",
                   help="train only these variants in this job, e.g. image+meta,image-only (default: all six; "
                        "--collect names the others as missing)")
    _add_train_options(p)
    # --- end cv / ablate -----------------------------------------------------------------

    p = sub.add_parser("cache", help="size of the image and heatmap caches; --clear empties them")
    p.add_argument("--clear", action="store_true", help="delete the cached images, heatmaps and image checks")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")

    p = sub.add_parser("serve", help="HTTP API and web page for a bundle")
    p.add_argument("bundle")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    return ap


def _cmd_data(args: argparse.Namespace) -> int:
    from .data.clean import clean, summarize
    from .data.formats import read_dataset

    if args.data_command == "synth":
        from .data.synth import make_synthetic

        path = make_synthetic(args.out, n=args.n, seed=args.seed, defects=args.defects)
        err.print(f"wrote SYNTHETIC data set ({args.n} images) to {path}")
        return 0
    read = read_dataset(args.path, format=args.format, column_map=args.column_map)
    check = not getattr(args, "no_image_check", False)
    table, report = clean(read, check_images=check, progress=not args.quiet)
    summary = summarize(table, report, read.format, raw=read.table)
    if args.data_command == "check":
        if args.report:
            report.save_json(args.report)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_summary(summary, report)
        return 0
    if args.data_command == "plot":
        from .plots import plot_class_distribution, save_figure

        save_figure(plot_class_distribution(summary["classes"], title=f"{Path(args.path).name}: images per class"), args.out)
        err.print(f"wrote {args.out}")
        return 0
    if args.data_command == "augment":
        import numpy as np

        from .data.cache import load_image, resize_image
        from .plots import save_figure
        from .transforms import plot_augmentations

        rows = table.groupby("label").head(1).head(args.n)
        imgs = np.stack([resize_image(load_image(p), 128) for p in rows["path"]])
        save_figure(plot_augmentations(imgs), args.out)
        err.print(f"wrote {args.out}")
        return 0
    raise AssertionError(args.data_command)


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


def _cmd_predict(args: argparse.Namespace) -> int:
    from .bundle import load_bundle
    from .predict import predict_one

    bundle = load_bundle(args.bundle)
    pred = predict_one(bundle, args.image, args.age, args.sex, args.site, explain=bool(args.heatmap) or not args.json)
    if args.heatmap:
        from PIL import Image

        from .errors import InputError

        if pred.overlay is None:
            raise InputError(f"this bundle ({bundle.info['model']['name']}) has no image branch: no heatmap to save")
        try:
            Image.fromarray(pred.overlay).save(args.heatmap)
        except (ValueError, OSError) as e:
            raise InputError(f"--heatmap {args.heatmap}: cannot write a PNG there ({e})") from None
    if args.json:
        print(json.dumps(pred.to_dict(), indent=2))
        return 0
    from rich.table import Table

    t = Table(title=f"{Path(args.image).name} — top: {pred.top_class}")
    t.add_column("class")
    t.add_column("probability", justify="right")
    for c, p in sorted(pred.probabilities.items(), key=lambda kv: -kv[1]):
        t.add_row(c, f"{p:.3f}")
    out.print(t)
    if args.heatmap:
        err.print(f"heatmap overlay: {args.heatmap}")
    err.print("[dim]Research use only; not a diagnosis.[/dim]")
    return 0


def _print_metadata_problems(m: dict) -> None:
    """evaluate (text): metadata values no vocabulary knows, and values the bundle never saw."""
    for key, what in (("unrecognised_metadata", "not recognised (read as unknown)"),
                      ("unseen_categories", "not among the bundle's levels (encoded as unknown)")):
        for field, values in (m.get(key) or {}).items():
            if values:
                named = ", ".join(f"{v[:80]!r} ({n})" for v, n in sorted(values.items(), key=lambda kv: -kv[1]))
                out.print(f"{field} {what}: {named}", highlight=False, soft_wrap=True)


def _cmd_cache(args: argparse.Namespace) -> int:
    from .data.cache import cache_usage, clear_cache

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


def _print_holdout(name: str, m: dict) -> None:
    err.print(f"[bold]{name}[/bold] on held-out data: accuracy {m['accuracy']:.4f}, balanced accuracy "
              f"{m['balanced_accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, melanoma sensitivity "
              f"{m['melanoma_sensitivity']:.4f}")
    if m.get("members"):
        import numpy as np

        parts = []
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")):
            v = np.array([r[key] for r in m["members"]])
            parts.append(f"{label} {v.mean():.4f} ± {v.std(ddof=1):.4f} ({v.min():.4f}–{v.max():.4f})")
        err.print(f"its {len(m['members'])} members alone: " + ", ".join(parts))


def _dispatch(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.command == "data":
        return _cmd_data(args)
    if args.command == "train":
        from .experiment import train_run

        cfg = _run_config(args, args.data, args.model)
        if args.members is not None:
            cfg.train.members = args.members
        res = train_run(cfg, progress=progress, resume=args.resume, member=args.member)
        if args.member is not None:
            m = res.metrics
            err.print(f"member {m['member']} (seed {m['seed']}) of {cfg.train.members}: {m['epochs_run']} epochs, "
                      f"best epoch {m['best_epoch'] + 1}; checkpoint in {res.run_dir / 'members' / str(m['member'])}. "
                      f"When every member is done, `--members {cfg.train.members} --resume` builds the ensemble.")
            return 0
        if res.metrics.get("n_images"):
            _print_holdout(cfg.model.name, res.metrics)
            err.print(f"report: {res.run_dir / 'report.html'}")
        else:
            err.print(f"[bold]{cfg.model.name}[/bold] trained on all rows but the validation part "
                      "(data.test_fraction = 0): no held-out metrics")
        err.print(f"bundle: {res.bundle}")
        return 0
    if args.command == "calibrate":
        from .experiment import calibrate_run

        m = calibrate_run(args.run_dir, mode=args.mode, progress=progress)
        c = m["calibration"]
        err.print(f"calibration: prior shift {c['prior_shift']:.2f}, temperature {c['temperature']:.3f} "
                  f"(fitted on {c['fitted_on']['n']} validation images)")
        _print_holdout("uncalibrated", m["uncalibrated"])
        _print_holdout("calibrated", m)
        err.print(f"report: {Path(args.run_dir) / 'report.html'}\nbundle: {Path(args.run_dir) / 'bundle'}")
        return 0
    if args.command == "evaluate":
        from .experiment import evaluate_bundle

        m = evaluate_bundle(args.bundle, args.data, format=args.format, progress=progress, out=args.out,
                            split_file=args.split_file, part=args.part, column_map=args.column_map)
        if args.json:
            print(json.dumps(m, indent=2))
        else:
            from .report import _HEADLINE

            for k in _HEADLINE:
                if k in m:
                    out.print(f"{k:22s} {m[k]}")
            _print_metadata_problems(m)
        return 0
    if args.command == "predict":
        return _cmd_predict(args)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, n=args.n, epochs=args.epochs, seed=args.seed, progress=progress)
        return 0
    if args.command == "models":
        from .models import list_models, model_spec

        for name in list_models():
            s = model_spec(name)
            out.print(f"{name:20s} {s.default_size or '-':>5} px  {s.description}")
        return 0
    if args.command == "cam":
        from .explain import cam_figures

        for path in cam_figures(args.bundle, args.images, args.out, alpha=args.alpha):
            err.print(f"wrote {path}")
        return 0
    if args.command in ("cv", "ablate"):  # --- cv / ablate ---
        from .cv import collect, render_summary, run_cv
        from .errors import ConfigError

        if args.collect:
            out.print(render_summary(collect(args.collect, progress=progress)))
            return 0
        if not args.data:
            raise ConfigError(f"{args.command}: give a data set, or --collect RUN_DIR")
        cfg = _run_config(args, args.data, None)
        if args.out is None and cfg.out == f"runs/{cfg.model.name}":
            cfg.out = f"runs/{args.command}"
        kw = dict(folds=args.folds, fold=args.fold, progress=progress, resume=args.resume,
                  keep_checkpoints=args.keep_checkpoints)
        if args.command == "cv":
            run_dir = run_cv(cfg, args.models, protocol_gap=args.protocol_gap, **kw)
        else:
            from .ablate import run_ablation

            only = None if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
            run_dir = run_ablation(cfg, only=only, **kw)
        if args.fold is None:
            out.print(render_summary(json.loads((run_dir / "summary.json").read_text())))
        err.print(f"run directory: {run_dir}")
        return 0  # --- end cv / ablate ---
    if args.command == "cache":
        return _cmd_cache(args)
    if args.command == "serve":
        from .serve.app import run_server

        run_server(args.bundle, host=args.host, port=args.port)
        return 0
    raise AssertionError(args.command)


def _error(message: str) -> None:
    """One unwrapped line (messages hold paths and values that must stay greppable)."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except DermfuseError as e:
        _error(str(e))
        return 2
    except FileNotFoundError as e:
        _error(f"file not found: {e.filename or e}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
