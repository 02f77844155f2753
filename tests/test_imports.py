"""The package's import graph: no module imports, directly or through others, one that
imports it back (function-level imports count too: they are circles that happen later);
lower layers never import higher ones; no module imports another's private name."""

from __future__ import annotations

import ast
from pathlib import Path

import dermfuse

ROOT = Path(dermfuse.__file__).parent

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS = [
    {"dermfuse", "dermfuse.errors", "dermfuse.constants", "dermfuse.io", "dermfuse.config", "dermfuse.released"},
    {"dermfuse.data", "dermfuse.models"},
    {"dermfuse.preprocess", "dermfuse.explain"},
    {"dermfuse.evaluation"},
    {"dermfuse.training"},
    {"dermfuse.inference"},
    {"dermfuse.runs"},
    {"dermfuse.export", "dermfuse.serve"},
    # the command line, and the 0.1 import paths kept for users (re-exports only)
    {"dermfuse.cli", "dermfuse.__main__", "dermfuse.experiment", "dermfuse.predict"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, str | None]]]:
    """Per module: (imported module, imported name or None) for every import of the package."""
    out: dict[str, list[tuple[str, str | None]]] = {m: [] for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - max(0, node.level - 1)] if node.level else []
                target = ".".join(base + [node.module] if node.module else base)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out[mod].append((sub, None) if sub in mods else (target, alias.name))
            elif isinstance(node, ast.Import):
                out[mod].extend((a.name, None) for a in node.names)
        out[mod] = [(t, n) for t, n in out[mod] if t in mods and t != mod]
    return out


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    return {m: {t for t, _ in imps} for m, imps in _imports(mods).items()}


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(mod: str) -> int:
    """The layer of a module: that of the longest listed name it is, or lies under."""
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and len(n) > best:
                best, rank = len(n), i
    assert rank is not None, f"{mod} is in no layer: add it to LAYERS"
    return rank


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a))


def test_the_circle_finder_sees_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_circle_in_the_package():
    assert [sorted(c) for c in _circles(_graph(_modules()))] == []


def test_the_layer_check_sees_an_upward_import():
    assert _upward({"dermfuse.data.cache": {"dermfuse.training.loop"}, "dermfuse.cli": {"dermfuse.data"}}) \
        == ["dermfuse.data.cache -> dermfuse.training.loop"]


def test_no_module_imports_a_higher_layer():
    assert _upward(_graph(_modules())) == []


def test_data_and_models_import_neither_training_runs_serve_nor_the_cli():
    high = ("dermfuse.training", "dermfuse.runs", "dermfuse.serve", "dermfuse.cli")
    graph = _graph(_modules())
    bad = sorted(f"{a} -> {b}" for a, targets in graph.items() if a.startswith(("dermfuse.data", "dermfuse.models"))
                 for b in targets if b.startswith(high))
    assert bad == []


def test_no_private_name_is_imported_from_another_module():
    private = sorted(f"{mod}: {name} from {target}" for mod, imps in _imports(_modules()).items()
                     for target, name in imps
                     if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__")))
    assert private == []


def test_the_web_service_imports_no_training_code():
    """Serving needs the engine and its preprocessing, not the training loop or DDP."""
    import subprocess
    import sys

    code = ("import sys, dermfuse.serve.app; print(sorted(m for m in sys.modules "
            "if m.startswith(('dermfuse.training', 'dermfuse.runs'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
