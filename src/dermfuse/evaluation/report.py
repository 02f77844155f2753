"""report.html: one self-contained page per run (figures embedded as base64 PNG, no
external asset), built from plain sections so that train, cv, ablate and demo can share it."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..constants import HEADLINE_METRICS

__all__ = ["Section", "table_html", "figure_html", "metrics_table_html", "subgroup_section", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2330;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;border-bottom:1px solid #dde;padding-bottom:.2rem;
margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
td,th{border:1px solid #d6d9e0;padding:.25rem .6rem;text-align:right}
th{background:#f2f4f8}td:first-child,th:first-child{text-align:left}
.banner{background:#fff4d6;border:1px solid #e8c766;padding:.6rem 1rem;border-radius:6px;margin:1rem 0}
.warn{background:#fde8e8;border:1px solid #e89a9a;padding:.6rem 1rem;border-radius:6px;margin:1rem 0}
.muted{color:#667}.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs figure{margin:0}
img{max-width:100%;border:1px solid #e3e5ea;border-radius:4px}
pre{background:#f6f7f9;padding:.6rem;border-radius:4px;overflow:auto;font-size:.8rem}
"""


@dataclass
class Section:
    title: str
    body: str  # HTML


@dataclass
class _Report:
    title: str
    subtitle: str = ""
    banners: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return html.escape(str(v))


def table_html(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """A plain HTML table; floats get 4 decimals, None shows as a dash."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def figure_html(png: bytes, caption: str = "", width: int | None = None) -> str:
    """Embed PNG bytes as an <img> (base64 data URI)."""
    b64 = base64.b64encode(png).decode("ascii")
    w = f' style="width:{width}px"' if width else ""
    cap = f"<figcaption class='muted'>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure><img{w} alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'/>{cap}</figure>"


_HEADLINE = HEADLINE_METRICS  # the old private name, for callers that still use it


def metrics_table_html(metrics: dict[str, Any]) -> str:
    """Headline metrics, then the per-class table (precision, recall, F1, specificity, AUC)."""
    head = table_html([(k, metrics.get(k)) for k in _HEADLINE if k in metrics], ("metric", "value"))
    per = metrics.get("per_class") or {}
    cols = ("precision", "recall", "f1", "specificity", "auc", "support")
    rows = [(c, *(v.get(k) for k in cols)) for c, v in per.items()]
    return head + (table_html(rows, ("class", *cols)) if rows else "")


def subgroup_section(result: dict[str, Any], plot_metrics: Sequence[str] = ("balanced_accuracy",
                                                                          "melanoma_sensitivity")) -> Section:
    """'Metrics by subgroup': a forest plot per metric and the table of a
    `dermfuse.evaluation.subgroups.subgroup_metrics` result (value [interval], gap)."""
    from .plots import fig_to_png_bytes, plot_subgroups

    def cell(v: dict[str, Any] | None) -> str:
        if not v or v.get("value") is None:
            return "–"
        ci = f" [{v['low']:.3f}, {v['high']:.3f}]" if v.get("low") is not None else ""
        return f"{v['value']:.3f}{ci}"

    def gap(v: dict[str, Any] | None) -> str:
        return "–" if not v or v.get("gap") is None else f"{v['gap']:+.3f}"

    metrics = list(result["metrics"])
    header = ["subgroup", "images", "lesions", "classes"]
    for m in metrics:
        header += [m, "gap"]
    rows = [["overall", result["overall"]["n_images"], result["overall"]["n_lesions"], result["overall"]["n_classes"]]
            + [x for m in metrics for x in (cell(result["overall"].get(m)), "")]]
    for r in result["subgroups"]:
        name = f"{r['by']}: {r['group']}" + (f" — too small ({r['why']})" if r["too_small"] else "")
        rows.append([name, r["n_images"], r["n_lesions"], r["n_classes"]]
                    + [x for m in metrics for x in (cell(r.get(m)), gap(r.get(m)))])
    figs = "<div class='figs'>" + "".join(
        figure_html(fig_to_png_bytes(plot_subgroups(result, m)), f"{m.replace('_', ' ')} by subgroup", width=520)
        for m in plot_metrics if m in metrics) + "</div>"
    text = (f"<p>Value [{int(round(100 * result['level']))} % interval] per subgroup and its gap to the overall "
            f"figure (subgroup − overall). Intervals: {result['n_boot']} resamples of whole "
            f"{html.escape(str(result['resampled_by']))}s over all rows, the overall and every subgroup figure "
            f"computed from the same draw. Too small to judge: {html.escape(result['rules']['too_small'])}. "
            f"Age bands: {html.escape(', '.join(result['rules']['age_bands']))}.</p>")
    return Section("Metrics by subgroup", text + figs + table_html(rows, header))


def write_report(
    path: str | Path,
    title: str,
    sections: Iterable[Section],
    subtitle: str = "",
    banners: Iterable[str] = (),
    warnings: Iterable[str] = (),
) -> Path:
    """Write one self-contained HTML page and return its path."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<div class='muted'>{html.escape(subtitle)}</div>")
    parts += [f"<div class='banner'>{html.escape(b)}</div>" for b in banners]
    parts += [f"<div class='warn'>{html.escape(w)}</div>" for w in warnings]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>{s.body}")
    parts.append(
        "<p class='muted'>dermfuse — research use only; not a diagnostic device.</p></body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io import atomic_write_text

    atomic_write_text(path, "".join(parts))
    return path


def json_block(obj: Any) -> str:
    """Pretty JSON in a <pre> block (for configs)."""
    return f"<pre>{html.escape(json.dumps(obj, indent=2, default=str))}</pre>"
