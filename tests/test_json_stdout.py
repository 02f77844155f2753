"""`--json` means only JSON on stdout: every command that has the option runs in a
subprocess with stdout a pipe (not a TTY, as in a script), progress bars left on, and its
stdout must parse as one JSON object; progress and logs go to stderr."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from _bundles import jpeg_bytes, lesion_image, make_bundle
from dermfuse.cli import build_parser


def _json_commands() -> set[str]:
    """'data check', 'evaluate', ... : every (sub)command whose parser has --json."""
    found = set()

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
            elif "--json" in getattr(action, "option_strings", ()):
                found.add(prefix)

    walk(build_parser(), "")
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, synth_small):
    root = tmp_path_factory.mktemp("json")
    bundle = make_bundle(root / "bundle", image_size=48)
    image = root / "lesion.jpg"
    image.write_bytes(jpeg_bytes(lesion_image(3)))
    return {"data": str(synth_small), "bundle": str(bundle), "image": str(image), "root": str(root)}


CASES = {
    "data check": ["data", "check", "{data}", "--json"],
    "evaluate": ["evaluate", "{bundle}", "{data}", "--json"],
    "predict": ["predict", "{bundle}", "{image}", "--age", "40", "--sex", "M", "--site", "back", "--json"],
    "predict (a folder)": ["predict", "{bundle}", "{root}", "--json"],  # lesion.jpg
    "cache": ["cache", "--json"],
    "card": ["card", "--bundle", "{bundle}", "--json"],
    "export": ["export", "{bundle}", "--out", "{root}/onnx", "--json"],
    "explain-eval": ["explain-eval", "{bundle}", "{data}", "--n", "4", "--steps", "4", "--json"],
    "tune": ["tune", "{data}", "--trials", "0", "--out", "{root}/tune", "--json"],
}
# 'release' needs a finished training run; tests/test_cli.py runs it (in process, not through a pipe).
NO_CASE_YET = {"release"}


def test_every_json_command_has_a_case():
    missing = _json_commands() - set(CASES) - NO_CASE_YET
    assert not missing, f"add a case for {sorted(missing)}"


@pytest.mark.parametrize("command", list(CASES))
def test_stdout_is_only_json(command, inputs):
    argv = [a.format(**inputs) for a in CASES[command]]
    env = {**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dermfuse", *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("{"), proc.stdout[:200]  # not even a blank line a progress bar left
    value = json.loads(proc.stdout)  # nothing before or after the object
    assert isinstance(value, dict) and value
