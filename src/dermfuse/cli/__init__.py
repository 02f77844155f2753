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

from .. import __version__
from ..config import DataConfig, ModelConfig, TrainConfig, choices
from ..errors import DermfuseError, InputError


class UsageError(InputError):
    """Wrong positional arguments (exit 2 with `error: ...`)."""

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


def _split_arg(text: str) -> str:
    """--split: the version-2 names only; 'image' (version 1) is refused with its new name."""
    if text == "image":
        raise argparse.ArgumentTypeError("'image' is now 'image-leaky' (the leaky image-level split)")
    return text


def _add_format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", help="data set format (default: detected from the CSV columns)")
    p.add_argument("--column-map", type=_column_map_arg, metavar="NAME=COLUMN,...",
                   help="format generic: which CSV column holds image_id and label (required) and lesion_id, "
                        "patient_id, age, sex, site (optional), e.g. image_id=isic_id,label=diagnosis")


def _add_fold_options(p: argparse.ArgumentParser) -> None:
    """The options `cv` and `ablate` share: folds, fold jobs, collecting, resuming, inner folds."""
    p.add_argument("--folds", type=int, help="number of folds (default: data.folds, 5)")
    p.add_argument("--fold", type=int, help="run fold K only, as an independent job (no report)")
    p.add_argument("--collect", metavar="RUN_DIR", help="merge the finished folds of RUN_DIR into its report")
    p.add_argument("--resume", action="store_true", help="continue unfinished folds from their checkpoints")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each fold's checkpoint.pt when it finishes")
    p.add_argument("--split-file", metavar="RUN/split.csv",
                   help="inner folds: fold only the rows this split file (a holdout run's split.csv) puts in --part; "
                        "the other rows (the holdout's test part) are never read")
    p.add_argument("--part", default="train",
                   help="with --split-file: the part(s) to fold, comma-separated (default train; train,val = all "
                        "but the test part)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (sections data/model/train)")
    p.add_argument("--out", help="run directory (default runs/<model>)")
    _add_format_options(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int, help="input size in px (default: the model's, 128 for the paper's)")
    p.add_argument("--split", type=_split_arg, choices=choices(DataConfig, "split"),
                   help="grouped (default: by patient where the data set has patient ids, else by lesion), "
                        "lesion or patient (exactly that id), image-leaky (image-level, leaky)")
    p.add_argument("--balance", choices=choices(TrainConfig, "balance"))
    p.add_argument("--input", choices=choices(ModelConfig, "input"),
                   help="what the image branch sees (heatmap = the paper's method)")
    p.add_argument("--image-backbone", help="ft_multicnn: a registered backbone instead of the three conv blocks")
    p.add_argument("--weights", help="local .safetensors/.pth state dict for the backbone")
    p.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    p.add_argument("--no-meta", action="store_true", help="ft_multicnn without the metadata branch")
    p.add_argument("--seed", type=int, help="sets both data.split_seed (which rows go to test, val and each "
                                            "fold) and train.init_seed (weights, shuffling, augmentation)")
    p.add_argument("--device", choices=choices(TrainConfig, "device"))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config value, e.g. --set train.schedule=cosine (repeatable)")


def _add_bundle_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", help="bundle directory (default: the released model that ships with dermfuse)")
    p.add_argument("--operating-point", default="argmax", choices=["argmax", "melanoma"],
                   help="argmax, or melanoma: answer 'mel' whenever P(mel) reaches the bundle's threshold "
                        "chosen on validation rows for sensitivity 0.85")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")


def _split_bundle(args: argparse.Namespace, n_inputs: int, what: str) -> tuple[str | None, list[str]]:
    """(bundle or None for the released model, the other positionals): with --bundle every
    positional is an input; without it, one more positional than ``n_inputs`` is the bundle."""
    paths = list(args.paths)
    if args.bundle is not None:
        if len(paths) != n_inputs:
            raise UsageError(f"with --bundle give {what} only (got {len(paths)} paths: {paths})")
        return args.bundle, paths
    if len(paths) == n_inputs + 1:
        return paths[0], paths[1:]
    if len(paths) == n_inputs:
        return None, paths
    raise UsageError(f"expected [BUNDLE] {what} (got {len(paths)} paths: {paths})")


def _run_config(args: argparse.Namespace, data: str, model: str | None):
    from ..config import apply_overrides, load_config

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
        cfg.data.split_seed = cfg.train.init_seed = args.seed
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
    p.add_argument("--init", metavar="BUNDLE|released",
                   help="fine-tune this bundle (or the released model): its architecture, classes, "
                        "metadata encoder (extended with new levels) and weights")
    _add_train_options(p)

    p = sub.add_parser("calibrate", help="fit prior shift + temperature on a finished run's validation part")
    p.add_argument("run_dir")
    p.add_argument("--mode", default="prior-temperature",
                   choices=[m for m in choices(TrainConfig, "calibration") if m != "none"])

    p = sub.add_parser("evaluate", help="score a bundle (default: the released model) on a data set",
                       description="dermfuse evaluate DATA (the released model) | evaluate BUNDLE DATA | "
                                   "evaluate --bundle BUNDLE DATA")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] DATA", help="one path: the data set; two: bundle, data set")
    _add_bundle_options(p)
    _add_format_options(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="write metrics.json, predictions.csv, risk_coverage.png and report.html here")
    p.add_argument("--split-file", help="a run's split.csv: score only the rows it puts in --part")
    p.add_argument("--part", default="test", help="with --split-file: train, val or test (default test)")
    p.add_argument("--by", metavar="KEY,...",
                   help="also score subgroups: any of sex,age_band,site (with --out: report.html shows them)")

    p = sub.add_parser("predict", help="classify an image, a folder of images or a CSV of images",
                       description="dermfuse predict IMAGE (the released model) | predict BUNDLE IMAGE | "
                                   "predict --bundle BUNDLE IMAGE. IMAGE may be a folder of images or a CSV "
                                   "with a column image (or path) and optional age, sex, site columns: then "
                                   "the answers go to a predictions CSV (--out, default stdout).")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] IMAGE", help="one path: the input; two: bundle, input")
    _add_bundle_options(p)
    p.add_argument("--age")
    p.add_argument("--sex")
    p.add_argument("--site")
    p.add_argument("--json", action="store_true")
    p.add_argument("--heatmap", help="save the heatmap overlay (PNG) here")
    p.add_argument("--explain", metavar="CLASS", help="the class whose heatmap to draw (default: the answer)")
    p.add_argument("--out", help="folder/CSV input: write the predictions CSV here")

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

    p = sub.add_parser("card", help="the model card of a bundle (default: the released model)")
    p.add_argument("--bundle", help="bundle directory (default: the released model)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the whole pipeline on synthetic data (minutes on a CPU)")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--n", type=int, default=1000, help="synthetic images (default 1000)")
    p.add_argument("--epochs", type=int, default=10, help="epochs at most per model (default 10)")
    p.add_argument("--seed", type=int, default=0)

    sub.add_parser("models", help="list registered models")

    p = sub.add_parser("cam", help="original | heatmap | overlay figures for images",
                       description="dermfuse cam IMAGE... (the released model) | cam BUNDLE IMAGE... | "
                                   "cam --bundle BUNDLE IMAGE...; the first path is the bundle when it is a "
                                   "directory holding bundle.json")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] IMAGE")
    p.add_argument("--bundle", help="bundle directory (default: the released model)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=0.4)
    p.add_argument("--explain", metavar="CLASS", help="the class to explain (default: each image's answer)")

    # --- cv / ablate (dermfuse.runs.cv, dermfuse.runs.ablate) ------------------------------------
    p = sub.add_parser("cv", help="k-fold cross-validation of several models on the same folds")
    p.add_argument("data", nargs="?", help="data set (omit with --collect)")
    p.add_argument("--models", default="cnn,resnet50,inception_v3,ft_multicnn:heatmap",
                   help="comma-separated NAME or NAME:INPUT (default: %(default)s)")
    p.add_argument("--protocol-gap", action="store_true",
                   help="also run each model on image-level folds and report how much that inflates the metrics")
    _add_fold_options(p)
    _add_train_options(p)
    p = sub.add_parser("ablate", help="FT-MultiCNN ablation: input {heatmap,image,overlay} x metadata {with,without}")
    p.add_argument("data", nargs="?", help="data set (omit with --collect)")
    p.add_argument("--variants", metavar="NAME,...",
                   help="train only these variants in this job, e.g. image+meta,image-only (default: all six; "
                        "--collect names the others as missing)")
    _add_fold_options(p)
    _add_train_options(p)
    # --- end cv / ablate -----------------------------------------------------------------

    p = sub.add_parser("cache", help="size of the image and heatmap caches; --clear empties them")
    p.add_argument("--clear", action="store_true", help="delete the cached images, heatmaps and image checks")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")

    # --- explain-eval (dermfuse.runs.explain_eval) ---------------------------------------------
    p = sub.add_parser("explain-eval", help="are a bundle's heatmaps faithful, on the lesion, free of a border frame?")
    p.add_argument("bundle")
    p.add_argument("data")
    _add_format_options(p)
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
    # --- federate (dermfuse.runs.federate) -------------------------------------------------------
    p = sub.add_parser("federate", help="federated training across sites made from the data (Flower)")
    p.add_argument("data")
    p.add_argument("--model", help="registered model name (default: the config's)")
    p.add_argument("--sites", type=int, required=True, help="number of sites (2 or more)")
    p.add_argument("--rounds", type=int, required=True, help="federated rounds")
    p.add_argument("--local-epochs", type=int, default=1, help="epochs each site trains per round (default 1)")
    p.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox"])
    p.add_argument("--mu", type=float, default=0.0, help="FedProx's proximal weight (with --strategy fedprox)")
    p.add_argument("--site-rule", default="site", choices=["site", "age", "random"],
                   help="how sites are made: by body site (default), age band, or at random (control)")
    p.add_argument("--engine", default="auto", choices=["auto", "simulation", "processes"],
                   help="Flower's simulation (needs Ray), or a server and one process per site on "
                        "127.0.0.1 (default auto: the simulation where Ray is installed)")
    p.add_argument("--central", action="store_true",
                   help="also train centrally for rounds x local epochs on the same rows and compare")
    _add_train_options(p)
    # --- end explain-eval / federate --------------------------------------------------------

    # --- tune ---
    p = sub.add_parser("tune", help="hyper-parameter search (Optuna, TPE + pruning) on the validation part")
    p.add_argument("data")
    p.add_argument("--model", help="registered model name (see `dermfuse models`)")
    p.add_argument("--trials", type=int, required=True, help="trials this worker runs (0: only write the report)")
    p.add_argument("--space", help="search space YAML (default: dermfuse/runs/search_space.yaml)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user:pass@host/db "
                                     "(default: sqlite:///OUT/study.db)")
    p.add_argument("--study", help="study name in the storage (default: dermfuse)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    _add_train_options(p)
    # --- end tune ---
    # --- export ---
    p = sub.add_parser("export", help="export a bundle for runtimes without PyTorch (ONNX)")
    p.add_argument("bundle")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="folder for the .onnx graph(s) and export.json")
    p.add_argument("--int8", action="store_true", help="also write 8-bit (onnxruntime dynamic quantisation) graphs")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--json", action="store_true", help="print export.json's summary on stdout")
    # --- end export ---
    p = sub.add_parser("serve", help="HTTP API and web page for a bundle (default: the released model)",
                       description="dermfuse serve (the released model) | serve BUNDLE | serve --bundle BUNDLE")
    p.add_argument("paths", nargs="*", metavar="BUNDLE")
    _add_bundle_options(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    return ap


def _cmd_data(args: argparse.Namespace) -> int:
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
    if args.data_command == "check":
        if args.report:
            report.save_json(args.report)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_summary(summary, report)
        return 0
    if args.data_command == "plot":
        from ..evaluation.plots import plot_class_distribution, save_figure

        save_figure(plot_class_distribution(summary["classes"], title=f"{Path(args.path).name}: images per class"), args.out)
        err.print(f"wrote {args.out}")
        return 0
    if args.data_command == "augment":
        import numpy as np

        from ..data.cache import load_image, resize_image
        from ..evaluation.plots import save_figure
        from ..preprocess import plot_augmentations

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


def _load(bundle_path: str | None, device: str = "cpu"):
    from ..inference.bundle import load_bundle
    from ..inference.device import resolve_device
    from ..released import resolve_bundle

    return load_bundle(resolve_bundle(bundle_path), device=resolve_device(device))


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.predictor import Predictor
    from ..inference.predict import predict_one

    bundle_path, (source,) = _split_bundle(args, 1, "IMAGE (a file, a folder of images or a CSV)")
    bundle = _load(bundle_path, args.device)
    if Path(source).is_dir() or Path(source).suffix.lower() == ".csv":
        from ..inference.predict import predict_table, read_inputs

        if args.heatmap or args.explain:
            raise UsageError("--heatmap and --explain are for one image; use `dermfuse cam` for many")
        table = predict_table(Predictor.from_bundle(bundle), read_inputs(source),
                              operating_point=args.operating_point, progress=not args.quiet)
        if args.json:
            print(json.dumps({"model_id": bundle.model_id, "predictions": table.to_dict(orient="records")}, indent=2))
        elif args.out:
            table.to_csv(args.out, index=False)
            err.print(f"{len(table)} predictions ({dict(table['status'].value_counts())}) -> {args.out}")
        else:
            sys.stdout.write(table.to_csv(index=False))
        return 0
    pred = predict_one(bundle, source, args.age, args.sex, args.site,
                       explain=bool(args.heatmap) or bool(args.explain) or not args.json,
                       explain_class=args.explain, operating_point=args.operating_point)
    if args.heatmap:
        from PIL import Image

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


def _print_metadata_problems(m: dict) -> None:
    """evaluate (text): metadata values no vocabulary knows, and values the bundle never saw."""
    for key, what in (("unrecognised_metadata", "not recognised (read as unknown)"),
                      ("unseen_categories", "not among the bundle's levels (encoded as unknown)")):
        for field, values in (m.get(key) or {}).items():
            if values:
                named = ", ".join(f"{v[:80]!r} ({n})" for v, n in sorted(values.items(), key=lambda kv: -kv[1]))
                out.print(f"{field} {what}: {named}", highlight=False, soft_wrap=True)


def _cmd_cache(args: argparse.Namespace) -> int:
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
        from ..runs.holdout import train_run

        cfg = _run_config(args, args.data, args.model)
        if args.init is not None:
            cfg.model.init = args.init
        if args.members is not None:
            cfg.train.members = args.members
        res = train_run(cfg, progress=progress, resume=args.resume, member=args.member)
        if args.member is not None:
            m = res.metrics
            err.print(f"member {m['member']} (seed {m['seed']}) of {cfg.train.members}: {m['epochs_run']} epochs, "
                      f"best epoch {m['best_epoch']}; checkpoint in {res.run_dir / 'members' / str(m['member'])}. "
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
        from ..runs.holdout import calibrate_run

        m = calibrate_run(args.run_dir, mode=args.mode, progress=progress)
        c = m["calibration"]
        err.print(f"calibration: prior shift {c['prior_shift']:.2f}, temperature {c['temperature']:.3f} "
                  f"(fitted on {c['fitted_on']['n']} validation images)")
        _print_holdout("uncalibrated", m["uncalibrated"])
        _print_holdout("calibrated", m)
        err.print(f"report: {Path(args.run_dir) / 'report.html'}\nbundle: {Path(args.run_dir) / 'bundle'}")
        return 0
    if args.command == "evaluate":
        from ..runs.holdout import evaluate_bundle

        bundle_path, (data,) = _split_bundle(args, 1, "DATA")
        m = evaluate_bundle(bundle_path, data, format=args.format, progress=progress, out=args.out,
                            split_file=args.split_file, part=args.part, column_map=args.column_map,
                            operating_point=args.operating_point, device=args.device, by=args.by)
        if args.json:
            print(json.dumps(m, indent=2))
        else:
            from ..constants import HEADLINE_METRICS

            for k in HEADLINE_METRICS:
                if k in m:
                    out.print(f"{k:22s} {m[k]}")
            for line in _trust_lines(m.get("trust") or {}):
                out.print(line)
            if "subgroups" in m:
                from ..evaluation.subgroups import render_subgroups

                out.print(render_subgroups(m["subgroups"]), markup=False, highlight=False, soft_wrap=True)
            _print_metadata_problems(m)
        return 0
    if args.command == "release":
        from ..runs.release import release_run

        r = release_run(args.run_dir, args.out, holdout=args.holdout, data=args.data, coverage=args.coverage,
                        mel_sensitivity=args.mel_sensitivity, ood_keep=args.ood_keep, max_train=args.max_train,
                        train_command=args.train_command, commit=args.commit, progress=progress)
        if args.json:
            print(json.dumps(r, indent=2, default=str))
        else:
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
    if args.command == "card":
        from ..inference.bundle import read_bundle_info
        from ..inference.card import model_card, render_card
        from ..released import resolve_bundle

        card = model_card(read_bundle_info(resolve_bundle(args.bundle)))
        if args.json:
            print(json.dumps(card, indent=2))
        else:
            sys.stdout.write(render_card(card))
        return 0
    if args.command == "predict":
        return _cmd_predict(args)
    if args.command == "demo":
        from ..runs.demo import run_demo

        run_demo(args.out, n=args.n, epochs=args.epochs, seed=args.seed, progress=progress)
        return 0
    if args.command == "models":
        from ..models import list_models, model_spec

        for name in list_models():
            s = model_spec(name)
            out.print(f"{name:20s} {s.default_size or '-':>5} px  {s.description}")
        return 0
    if args.command == "cam":
        from ..inference.figures import cam_figures

        paths = list(args.paths)
        bundle_path = args.bundle
        if bundle_path is None and len(paths) > 1 and (Path(paths[0]) / "bundle.json").is_file():
            bundle_path, paths = paths[0], paths[1:]
        for path in cam_figures(bundle_path, paths, args.out, alpha=args.alpha, explain_class=args.explain,
                                device=args.device):
            err.print(f"wrote {path}")
        return 0
    if args.command in ("cv", "ablate"):  # --- cv / ablate ---
        from ..runs.cv import collect, render_summary, run_cv
        from ..errors import ConfigError

        if args.collect:
            out.print(render_summary(collect(args.collect, progress=progress)))
            return 0
        if not args.data:
            raise ConfigError(f"{args.command}: give a data set, or --collect RUN_DIR")
        cfg = _run_config(args, args.data, None)
        if args.out is None and cfg.out == f"runs/{cfg.model.name}":
            cfg.out = f"runs/{args.command}"
        from ..runs.cv import RowSelection

        rows = RowSelection.parse(args.split_file, args.part) if args.split_file else None
        kw = dict(folds=args.folds, fold=args.fold, progress=progress, resume=args.resume,
                  keep_checkpoints=args.keep_checkpoints, rows=rows)
        if args.command == "cv":
            run_dir = run_cv(cfg, args.models, protocol_gap=args.protocol_gap, **kw)
        else:
            from ..runs.ablate import run_ablation

            only = None if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
            run_dir = run_ablation(cfg, only=only, **kw)
        if args.fold is None:
            out.print(render_summary(json.loads((run_dir / "summary.json").read_text())))
        err.print(f"run directory: {run_dir}")
        return 0  # --- end cv / ablate ---
    if args.command == "explain-eval":  # --- explain-eval ---
        from ..runs.explain_eval import explain_eval, render_markdown

        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        res = explain_eval(args.bundle, args.data, split_file=args.split_file, part=args.part, methods=methods,
                           n_images=args.n or None, steps=args.steps, fill=args.fill, band=args.band, pad=args.pad,
                           seed=args.seed, format=args.format, out=args.out, progress=progress)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            out.print(render_markdown(res), markup=False, highlight=False)
        if args.out:
            err.print(f"wrote {Path(args.out) / 'explain_eval.json'} and {Path(args.out) / 'plots'}")
        return 0
    if args.command == "federate":  # --- federate ---
        from ..errors import ConfigError
        from ..runs.federate import federate

        if args.epochs is not None:
            raise ConfigError("federate: the epochs are --rounds x --local-epochs; leave out --epochs")
        cfg = _run_config(args, args.data, args.model)
        if args.out is None and cfg.out == f"runs/{cfg.model.name}":
            cfg.out = f"runs/federate-{cfg.model.name}"
        res = federate(cfg, sites=args.sites, rounds=args.rounds, local_epochs=args.local_epochs,
                       strategy=args.strategy, mu=args.mu, site_rule=args.site_rule, engine=args.engine,
                       central=args.central, progress=progress)
        _print_holdout(f"federated ({args.strategy}, {args.sites} sites, best round {res.metrics['best_round']})",
                       res.metrics)
        if res.central is not None:
            _print_holdout("central", res.central)
            d = res.comparison["federated_minus_central"]["balanced_accuracy"]
            err.print(f"federated - central balanced accuracy: {d['diff']:+.4f} "
                      f"[{d['low']:+.4f}, {d['high']:+.4f}] (lesion bootstrap)")
        err.print(f"run directory: {res.run_dir}")
        return 0  # --- end explain-eval / federate ---
    if args.command == "tune":  # --- tune ---
        from ..runs.tune import load_space, tune

        cfg = _run_config(args, args.data, args.model)
        if args.out is None and cfg.out == f"runs/{cfg.model.name}":
            cfg.out = "runs/tune"
        res = tune(cfg, args.trials, cfg.out, storage=args.storage, study_name=args.study,
                   space=load_space(args.space), progress=progress)
        if args.json:
            print(json.dumps({"out": str(res.out), "study": res.study_name, "storage": res.storage,
                              "trials_run": res.trials_run, "trials": res.counts, "best_value": res.best_value,
                              "best_params": res.best_params,
                              "best_config": None if res.best_config is None else str(res.best_config)}, indent=2))
        else:
            err.print(f"study {res.study_name!r} ({res.storage}): {res.counts}")
            if res.best_config is not None:
                err.print(f"best validation balanced accuracy {res.best_value:.4f}: {res.best_params}")
                err.print(f"best config: {res.best_config}  (dermfuse train {args.data} --config {res.best_config})")
            err.print(f"report: {res.out / 'trials.html'}")
        return 0  # --- end tune ---
    if args.command == "export":  # --- export ---
        from ..export.onnx import export_onnx

        res = export_onnx(args.bundle, args.out, int8=args.int8, opset=args.opset, progress=progress)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            for f in res["files"]:
                err.print(f"wrote {Path(args.out) / f}")
        return 0  # --- end export ---
    if args.command == "cache":
        return _cmd_cache(args)
    if args.command == "serve":
        from ..serve.app import run_server

        bundle_path, _ = _split_bundle(args, 0, "nothing else")
        run_server(bundle_path, host=args.host, port=args.port, operating_point=args.operating_point,
                   device=args.device)
        return 0
    raise AssertionError(args.command)


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
        lines.append(f"melanoma operating point: P(mel) >= {mo['threshold']:.4f}: sensitivity {mo['sensitivity']}, "
                     f"specificity {mo['specificity']} (argmax: {mo['argmax_sensitivity']}, {mo['argmax_specificity']})")
    if t.get("status_counts"):
        lines.append(f"status: {t['status_counts']}")
    return lines


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
