"""Shared values are defined once, in dermfuse.constants, and the modules use that one."""

import ast
from pathlib import Path

import dermfuse
from dermfuse import constants

ROOT = Path(dermfuse.__file__).parent


def _assigned_literals() -> dict[str, list[str]]:
    """name -> modules that bind it to a literal (a number, a tuple, a string) at top level."""
    out: dict[str, list[str]] = {}
    for f in ROOT.rglob("*.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.Tuple)):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        out.setdefault(t.id, []).append(str(f.relative_to(ROOT)))
    return out


def test_each_constant_has_one_home():
    bound = _assigned_literals()
    for name in constants.__all__:
        assert bound.get(name) == ["constants.py"], f"{name} is defined in {bound.get(name)}"


def test_modules_use_the_shared_values():
    from dermfuse.data import clean, encode
    from dermfuse.constants import OVERLAY_ALPHA
    from dermfuse.evaluation.report import _HEADLINE

    assert clean.AGE_RANGE is encode.AGE_RANGE is constants.AGE_RANGE
    assert OVERLAY_ALPHA == constants.OVERLAY_ALPHA and _HEADLINE is constants.HEADLINE_METRICS


def test_banner_text_is_written_once():
    texts = [str(f.relative_to(ROOT)) for f in ROOT.rglob("*.py") if "SYNTHETIC DATA —" in f.read_text()]
    assert texts == ["constants.py"]
