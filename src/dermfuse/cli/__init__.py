"""Command line. It only parses: every command calls a library function that is also
usable from Python. Errors that dermfuse raises on purpose print as ``error: …`` with exit
code 2 and no traceback.

Each command has ``add_<cmd>(subparsers)`` and ``run_<cmd>(args)`` in the module of its
family (parser holds the option groups they share); ``COMMANDS`` registers them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from rich.markup import escape

from .. import __version__
from ..errors import DermfuseError
from . import data_cmds, infer_cmds, train_cmds
from .output import err
from .parser import UsageError
from .parser import run_config as _run_config  # tests/test_config_values.py

__all__ = ["main", "build_parser"]

# name: (add_<cmd>, run_<cmd>), in the order `dermfuse --help` lists them
COMMANDS: dict[str, tuple[Callable[..., None], Callable[[argparse.Namespace], int]]] = {
    "data": (data_cmds.add_data, data_cmds.run_data),
    "train": (train_cmds.add_train, train_cmds.run_train),
    "calibrate": (data_cmds.add_calibrate, data_cmds.run_calibrate),
    "evaluate": (infer_cmds.add_evaluate, infer_cmds.run_evaluate),
    "predict": (infer_cmds.add_predict, infer_cmds.run_predict),
    "release": (data_cmds.add_release, data_cmds.run_release),
    "card": (infer_cmds.add_card, infer_cmds.run_card),
    "demo": (data_cmds.add_demo, data_cmds.run_demo),
    "models": (data_cmds.add_models, data_cmds.run_models),
    "cam": (infer_cmds.add_cam, infer_cmds.run_cam),
    "cv": (train_cmds.add_cv, train_cmds.run_cv),
    "ablate": (train_cmds.add_ablate, train_cmds.run_ablate),
    "cache": (data_cmds.add_cache, data_cmds.run_cache),
    "explain-eval": (data_cmds.add_explain_eval, data_cmds.run_explain_eval),
    "federate": (train_cmds.add_federate, train_cmds.run_federate),
    "tune": (train_cmds.add_tune, train_cmds.run_tune),
    "teach": (train_cmds.add_teach, train_cmds.run_teach),
    "export": (infer_cmds.add_export, infer_cmds.run_export),
    "serve": (infer_cmds.add_serve, infer_cmds.run_serve),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dermfuse", description="Multimodal skin-lesion classification with activation heatmaps (research use only).")
    ap.add_argument("--version", action="version", version=f"dermfuse {__version__}")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return ap


def _dispatch(args: argparse.Namespace) -> int:
    if args.command not in COMMANDS:
        raise AssertionError(args.command)
    return COMMANDS[args.command][1](args)


def _error(message: str) -> None:
    """One unwrapped line (messages hold paths and values that must stay greppable)."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, so that a reader who left is a BrokenPipeError below, not at exit
        return code
    except DermfuseError as e:
        _error(str(e))
        return 2
    except FileNotFoundError as e:
        _error(f"file not found: {e.filename or e}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:  # `dermfuse predict FOLDER | head`: the reader left; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would fail again
        return 141  # 128 + SIGPIPE, as a shell tool ends
