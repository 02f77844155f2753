"""The two consoles every command prints to (results on stdout, progress and notes on
stderr) and the lines several commands print."""

from __future__ import annotations

from rich.console import Console

out = Console()
err = Console(stderr=True)


def print_holdout(name: str, m: dict) -> None:
    """Held-out metrics of a train, calibrate or federate run (and of its members alone)."""
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
