"""The option groups several commands share, their argument types, and what turns the parsed
options into a config or a (bundle, inputs) pair."""

from __future__ import annotations

import argparse

from ..config import DataConfig, ModelConfig, TrainConfig, choices
from ..errors import InputError


class UsageError(InputError):
    """Wrong positional arguments (exit 2 with `error: ...`)."""


def column_map_arg(text: str) -> dict[str, str]:
    """``image_id=isic_id,label=diagnosis,...`` -> {"image_id": "isic_id", ...} (--column-map)."""
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if p.count("=") != 1 or not all(s.strip() for s in p.split("="))]
    if not pairs or bad:
        raise argparse.ArgumentTypeError(
            f"expected NAME=COLUMN pairs separated by commas, e.g. image_id=isic_id,label=diagnosis,age=age_years; "
            f"could not read {', '.join(map(repr, bad)) or repr(text)}")
    return {k.strip(): v.strip() for k, v in (p.split("=") for p in pairs)}


def split_arg(text: str) -> str:
    """--split: the version-2 names only; 'image' (version 1) is refused with its new name."""
    if text == "image":
        raise argparse.ArgumentTypeError("'image' is now 'image-leaky' (the leaky image-level split)")
    return text


def image_size_arg(text: str) -> int | list[int]:
    """--image-size: '128' or '120x160' (height x width) -> data.image_size's int or [h, w]."""
    from ..image_size import parse_size, size_json

    try:
        return size_json(parse_size(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", help="data set format (default: detected from the CSV columns)")
    p.add_argument("--column-map", type=column_map_arg, metavar="NAME=COLUMN,...",
                   help="format generic: which CSV column holds image_id and label (required) and lesion_id, "
                        "patient_id, age, sex, site (optional), e.g. image_id=isic_id,label=diagnosis")


def add_fold_options(p: argparse.ArgumentParser) -> None:
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


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options every training command (train, cv, ablate, federate, tune) reads with `run_config`."""
    p.add_argument("--config", help="YAML config file (sections data/model/train)")
    p.add_argument("--out", help="run directory (default runs/<model>)")
    add_format_options(p)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=image_size_arg, metavar="S|HxW",
                   help="input size in px: a side (128, a square, the paper's squash) or height x width "
                        "(120x160 keeps HAM10000's 4:3); default: the model's, 128 for the paper's")
    p.add_argument("--split", type=split_arg, choices=choices(DataConfig, "split"),
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


def add_bundle_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", help="bundle directory (default: the released model that ships with dermfuse)")
    p.add_argument("--operating-point", default="argmax", choices=["argmax", "melanoma"],
                   help="argmax, or melanoma: answer 'mel' whenever P(mel) reaches the bundle's threshold "
                        "chosen on validation rows for sensitivity 0.85")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")


def split_bundle(args: argparse.Namespace, n_inputs: int, what: str) -> tuple[str | None, list[str]]:
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


def run_config(args: argparse.Namespace, data: str, model: str | None):
    """The run's config: --config (or the defaults), then the options `add_train_options` adds."""
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
