"""Training commands: train, cv, ablate, federate, tune, teach (dermfuse.runs.holdout, .cv,
.ablate, .federate, .tune, dermfuse.runs.teach). Each has ``add_<cmd>(subparsers)`` and ``run_<cmd>(args) -> exit code``."""

from __future__ import annotations

import argparse
import json

from .output import err, out, print_holdout
from .parser import add_fold_options, add_train_options, run_config


def add_train(sub) -> None:
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
    add_train_options(p)


def run_train(args: argparse.Namespace) -> int:
    from ..runs.holdout import train_run

    cfg = run_config(args, args.data, args.model)
    if args.init is not None:
        cfg.model.init = args.init
    if args.members is not None:
        cfg.train.members = args.members
    res = train_run(cfg, progress=not args.quiet, resume=args.resume, member=args.member)
    if args.member is not None:
        m = res.metrics
        err.print(f"member {m['member']} (seed {m['seed']}) of {cfg.train.members}: {m['epochs_run']} epochs, "
                  f"best epoch {m['best_epoch']}; checkpoint in {res.run_dir / 'members' / str(m['member'])}. "
                  f"When every member is done, `--members {cfg.train.members} --resume` builds the ensemble.")
        return 0
    if res.metrics.get("n_images"):
        print_holdout(cfg.model.name, res.metrics)
        err.print(f"report: {res.run_dir / 'report.html'}")
    else:
        err.print(f"[bold]{cfg.model.name}[/bold] trained on all rows but the validation part "
                  "(data.test_fraction = 0): no held-out metrics")
    err.print(f"bundle: {res.bundle}")
    return 0


def add_cv(sub) -> None:
    p = sub.add_parser("cv", help="k-fold cross-validation of several models on the same folds")
    p.add_argument("data", nargs="?", help="data set (omit with --collect)")
    p.add_argument("--models", default="cnn,resnet50,inception_v3,ft_multicnn:heatmap",
                   help="comma-separated NAME or NAME:INPUT (default: %(default)s)")
    p.add_argument("--protocol-gap", action="store_true",
                   help="also run each model on image-level folds and report how much that inflates the metrics")
    add_fold_options(p)
    add_train_options(p)


def add_ablate(sub) -> None:
    p = sub.add_parser("ablate", help="FT-MultiCNN ablation: input {heatmap,image,overlay} x metadata {with,without}")
    p.add_argument("data", nargs="?", help="data set (omit with --collect)")
    p.add_argument("--variants", metavar="NAME,...",
                   help="train only these variants in this job, e.g. image+meta,image-only (default: all six; "
                        "--collect names the others as missing)")
    add_fold_options(p)
    add_train_options(p)


def _run_folds(args: argparse.Namespace, run) -> int:
    """cv and ablate: --collect, or ``run(cfg, **fold options)`` -> run directory, then its summary."""
    from ..errors import ConfigError
    from ..runs.cv import RowSelection, collect, render_summary

    progress = not args.quiet
    if args.collect:
        out.print(render_summary(collect(args.collect, progress=progress)))
        return 0
    if not args.data:
        raise ConfigError(f"{args.command}: give a data set, or --collect RUN_DIR")
    cfg = run_config(args, args.data, None)
    if args.out is None and cfg.out == f"runs/{cfg.model.name}":
        cfg.out = f"runs/{args.command}"
    rows = RowSelection.parse(args.split_file, args.part) if args.split_file else None
    run_dir = run(cfg, folds=args.folds, fold=args.fold, progress=progress, resume=args.resume,
                  keep_checkpoints=args.keep_checkpoints, rows=rows)
    if args.fold is None:
        out.print(render_summary(json.loads((run_dir / "summary.json").read_text())))
    err.print(f"run directory: {run_dir}")
    return 0


def run_cv(args: argparse.Namespace) -> int:
    from ..runs.cv import run_cv as cross_validate

    return _run_folds(args, lambda cfg, **kw: cross_validate(cfg, args.models, protocol_gap=args.protocol_gap, **kw))


def run_ablate(args: argparse.Namespace) -> int:
    from ..runs.ablate import run_ablation

    only = None if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
    return _run_folds(args, lambda cfg, **kw: run_ablation(cfg, only=only, **kw))


def add_federate(sub) -> None:
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
    add_train_options(p)


def run_federate(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..runs.federate import federate

    if args.epochs is not None:
        raise ConfigError("federate: the epochs are --rounds x --local-epochs; leave out --epochs")
    cfg = run_config(args, args.data, args.model)
    if args.out is None and cfg.out == f"runs/{cfg.model.name}":
        cfg.out = f"runs/federate-{cfg.model.name}"
    res = federate(cfg, sites=args.sites, rounds=args.rounds, local_epochs=args.local_epochs,
                   strategy=args.strategy, mu=args.mu, site_rule=args.site_rule, engine=args.engine,
                   central=args.central, progress=not args.quiet)
    print_holdout(f"federated ({args.strategy}, {args.sites} sites, best round {res.metrics['best_round']})",
                  res.metrics)
    if res.central is not None:
        print_holdout("central", res.central)
        d = res.comparison["federated_minus_central"]["balanced_accuracy"]
        err.print(f"federated - central balanced accuracy: {d['diff']:+.4f} "
                  f"[{d['low']:+.4f}, {d['high']:+.4f}] (lesion bootstrap)")
    err.print(f"run directory: {res.run_dir}")
    return 0


def add_tune(sub) -> None:
    p = sub.add_parser("tune", help="hyper-parameter search (Optuna, TPE + pruning) on the validation part")
    p.add_argument("data")
    p.add_argument("--model", help="registered model name (see `dermfuse models`)")
    p.add_argument("--trials", type=int, required=True, help="trials this worker runs (0: only write the report)")
    p.add_argument("--space", help="search space YAML (default: dermfuse/runs/search_space.yaml)")
    p.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user:pass@host/db "
                                     "(default: sqlite:///OUT/study.db)")
    p.add_argument("--study", help="study name in the storage (default: dermfuse)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    add_train_options(p)


def run_tune(args: argparse.Namespace) -> int:
    from ..runs.tune import load_space, tune

    cfg = run_config(args, args.data, args.model)
    if args.out is None and cfg.out == f"runs/{cfg.model.name}":
        cfg.out = "runs/tune"
    res = tune(cfg, args.trials, cfg.out, storage=args.storage, study_name=args.study,
               space=load_space(args.space), progress=not args.quiet)
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
    return 0


def add_teach(sub) -> None:
    p = sub.add_parser("teach", help="soft targets for distillation: teacher bundles score a split's training rows",
                       description="dermfuse teach DATA --teacher BUNDLE [--teacher BUNDLE ...] --split-file "
                                   "RUN/split.csv --out targets.csv, or dermfuse teach --from-cv CV_RUN/VARIANT "
                                   "--out targets.csv (cross-fitted: the out-of-fold predictions of `dermfuse cv "
                                   "DATA --split-file RUN/split.csv --part train`); then train the student with "
                                   "--set train.distill_targets=targets.csv. The teachers must have trained on "
                                   "the same split (never on the student's validation or test rows).")
    p.add_argument("data", nargs="?", help="the data set (with --teacher)")
    p.add_argument("--teacher", action="append", metavar="BUNDLE",
                   help="a finished bundle; repeat for an ensemble (their probabilities are averaged)")
    p.add_argument("--from-cv", metavar="CV_RUN/VARIANT",
                   help="instead of --teacher: a finished `dermfuse cv` variant folder; its folds' out-of-fold "
                        "predictions are the targets (each row scored by the model that did not train on it)")
    p.add_argument("--split-file", help="the student's split.csv: score only the rows it puts in --part")
    p.add_argument("--part", default="train", help="with --split-file: the part to score (default train)")
    p.add_argument("--out", required=True, help="the predictions CSV to write (train.distill_targets reads it)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")


def run_teach(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evaluation.metrics import balanced_accuracy
    from ..runs.teach import out_of_fold_targets, teacher_targets

    if (args.from_cv is None) == (args.teacher is None):
        raise ConfigError("teach: give either --teacher BUNDLE (with DATA) or --from-cv CV_RUN/VARIANT")
    if args.from_cv is not None:
        if args.data is not None or args.split_file is not None:
            raise ConfigError("teach --from-cv: the cv run fixes the rows; leave out DATA and --split-file")
        ids, y, proba, classes, rows = out_of_fold_targets(args.from_cv, out=args.out)
        scored_by = (f"the out-of-fold predictions of {args.from_cv} (part(s) {', '.join(rows['parts'])} "
                     f"of {rows['split_file']})")
    else:
        if args.data is None:
            raise ConfigError("teach --teacher: name the data set (dermfuse teach DATA --teacher BUNDLE ...)")
        ids, y, proba, classes = teacher_targets(args.teacher, args.data, args.split_file, args.part, out=args.out,
                                                 device=args.device, progress=not args.quiet)
        scored_by = f"{len(args.teacher)} teacher(s), uncalibrated"
    pred = proba.argmax(1)
    err.print(f"{len(ids)} rows scored by {scored_by}: accuracy {(pred == y).mean():.3f}, balanced accuracy "
              f"{balanced_accuracy(y, pred):.3f} on these rows -> {args.out}", soft_wrap=True)
    return 0
