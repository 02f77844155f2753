"""The model card: what a model is for, what it was trained on, how well it does on held-out
lesions and what it must not be used for. Stored as ``bundle.json["model_card"]``; its
fields follow MONAI bundle metadata (``metadata.json``) where they fit (name, version, task,
description, intended_use, data_source, data_type, image_classes, network_data_format,
references, license, pytorch_version), plus population limits, the exact training command
and commit, held-out metrics with 95 % lesion-bootstrap intervals and the trust thresholds.

`model_card` reads one from any bundle (older bundles get the short card they carried, with
their training data and whether it was synthetic); `render_card` writes it as text."""

from __future__ import annotations

from typing import Any

from .. import CLASS_NAMES
from ..evaluation.subgroups import MIN_IMAGES

__all__ = ["CARD_SCHEMA", "LICENSES", "NOT_FOR", "POPULATION_LIMITS", "model_card", "render_card"]

CARD_SCHEMA = "dermfuse-model-card/1"

LICENSES = {
    "weights": "CC BY-NC 4.0 (like the HAM10000 images they were trained on; non-commercial use only)",
    "code": "Apache-2.0",
}

INTENDED_USE = ("Research on skin-lesion classification from dermoscopic images and patient metadata. "
                "Not a medical device; not for diagnosis, screening or treatment decisions.")

NOT_FOR = [
    "diagnosis, screening or any clinical decision",
    "photographs that are not dermoscopic (phone or clinical close-ups, histology, anything else): "
    "they are out of distribution; the OOD flag catches many but not all",
    "lesion types outside the seven classes: the model has no 'other' class and will name one of the seven",
    "children: HAM10000 has few images of patients under 20",
    "populations, devices or centres other than HAM10000's: untested outside HAM10000",
]

POPULATION_LIMITS = [
    "HAM10000 (Tschandl et al. 2018): dermoscopic images from two centres (Vienna, Austria, and "
    "Rosendahl, Queensland, Australia)",
    "mostly light skin (Fitzpatrick types are not recorded; the centres' populations are largely fair-skinned)",
    "seven classes only (akiec, bcc, bkl, df, mel, nv, vasc); nevi are about two thirds of the images",
    "images here are 200x150 px copies of the originals (600x450)",
    "few images of patients under 20; age, sex and site are missing for some images",
]


def model_card(info: dict[str, Any]) -> dict[str, Any]:
    """The card of a bundle (its ``bundle.json`` as a dict). A bundle made by ``dermfuse
    release`` carries the full card; older ones get their short card with the model id, the
    training data and a ``synthetic`` flag."""
    card = dict(info.get("model_card") or {})
    if card.get("schema") == CARD_SCHEMA:
        return card
    data = info.get("training_data", {}) or {}
    return {
        "schema": "dermfuse-model-card/0 (a bundle made before `dermfuse release`: a short card)",
        "name": info.get("model", {}).get("name", "?"),
        "model_id": info.get("model_id", "unknown"),
        "intended_use": card.get("intended_use", INTENDED_USE),
        "limitations": card.get("limitations", ""),
        "synthetic": bool(data.get("synthetic", False)),
        "data_source": {k: data[k] for k in ("name", "path", "format", "n_train", "synthetic") if k in data},
        "image_classes": {c: CLASS_NAMES.get(c, c) for c in info.get("classes", [])},
        "performance": {"note": "metrics in 'metrics' are the run's own; no lesion-bootstrap intervals",
                        "metrics": info.get("metrics", {})},
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    return f"{_fmt(m.get('value'))} [{_fmt(m.get('low'))}, {_fmt(m.get('high'))}]"


def render_card(card: dict[str, Any]) -> str:
    """The card as plain text (what ``dermfuse card`` prints)."""
    lines = [f"MODEL CARD: {card.get('name', '?')}  ({card.get('model_id', 'unknown')})", ""]
    if card.get("synthetic"):
        lines += ["!!! SYNTHETIC DEMO MODEL: trained on synthetic blobs, not on real lesions. !!!",
                  "!!! Its answers say nothing about real skin lesions.                      !!!", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    lines += ["Intended use", f"  {card.get('intended_use', INTENDED_USE)}", ""]
    if card.get("not_for"):
        lines += ["Must not be used for"] + [f"  - {x}" for x in card["not_for"]] + [""]
    lines += _key_values("Training data", card.get("data_source") or {})
    if card.get("population_limits"):
        lines += ["Population limits"] + [f"  - {x}" for x in card["population_limits"]] + [""]
    tr = card.get("training") or {}
    if tr:
        lines += ["Training"] + [f"  {k}: {v}" for k, v in tr.items() if not isinstance(v, dict)] + [""]
    lines += _performance_lines(card.get("performance") or {})
    lines += _key_values("When not to trust it (thresholds chosen on validation rows)", card.get("trust") or {})
    lic = card.get("license")
    if lic:
        lines += ["Licence"] + ([f"  {k}: {v}" for k, v in lic.items()] if isinstance(lic, dict) else [f"  {lic}"])
        lines.append("")
    if card.get("references"):
        lines += ["References"] + [f"  - {r}" for r in card["references"]]
    return "\n".join(lines).rstrip() + "\n"


def _key_values(title: str, mapping: dict[str, Any]) -> list[str]:
    """A titled block of ``key: value`` lines and a blank line; nothing for an empty mapping."""
    if not mapping:
        return []
    return [title, *(f"  {k}: {v}" for k, v in mapping.items()), ""]


def _performance_lines(perf: dict[str, Any]) -> list[str]:
    """The held-out metrics with their intervals, or the run's own metrics where there are none."""
    hold = perf.get("holdout")
    lines = ["Performance on held-out lesions"]
    if hold:
        lines.append(f"  from: {hold.get('source', '?')}  ({hold.get('n_images', '?')} images, "
                     f"{hold.get('n_lesions', '?')} lesions; 95 % lesion-bootstrap intervals)")
        for k, v in (hold.get("overall") or {}).items():
            lines.append(f"  {k:24s} {_ci(v)}")
        pcs = hold.get("per_class") or {}
        if pcs:
            lines.append("  per class: sensitivity | specificity | n")
            for c, v in pcs.items():
                lines.append(f"    {c:6s} {_ci(v.get('sensitivity')):26s} {_ci(v.get('specificity')):26s} {v.get('n', '-')}")
        lines += _operating_point_lines(hold.get("operating_points") or {})
        for name, groups in (hold.get("subgroups") or {}).items():
            lines.append(f"  by {name}: balanced accuracy (n)")
            for g, v in groups.items():
                n = v.get("n")
                small = isinstance(n, int) and n < MIN_IMAGES  # the subgroup table's too-small rule
                lines.append(f"    {g:18s} {_ci(v.get('balanced_accuracy'))} ({n if n is not None else '-'})"
                             + (f"  too few to judge (< {MIN_IMAGES} images)" if small else ""))
    else:
        lines.append(f"  {perf.get('note', 'none recorded')}")
        for k, v in (perf.get("metrics") or {}).items():
            if not isinstance(v, (dict, list)):
                lines.append(f"  {k}: {_fmt(v, 4)}")
    lines.append("")
    return lines


def _operating_point_lines(ops: dict[str, Any]) -> list[str]:
    """The selective threshold's coverage and accuracy and the melanoma operating point, held out."""
    lines = []
    if ops.get("note"):
        lines.append(f"  operating points: {ops['note']}")
    elif ops:
        lines.append("  operating points: the holdout run's own thresholds (fitted on its validation rows) "
                     "on its test rows; the shipped model's are under 'When not to trust it'")
    if ops.get("selective"):
        sel = ops["selective"]
        lines.append(f"  answered (top probability >= {sel['threshold']:.3f}, target coverage "
                     f"{sel['target_coverage']:.0%}): coverage {_ci(sel.get('coverage'))}")
        lines.append(f"    accuracy of the answered {_ci(sel.get('accuracy_answered'))}, balanced accuracy "
                     f"{_ci(sel.get('balanced_accuracy_answered'))}")
    if ops.get("melanoma"):
        m = ops["melanoma"]
        lines.append(f"  melanoma operating point (P(mel) >= {m['threshold']:.3f}, {m.get('n_mel', '?')} "
                     f"melanomas): sensitivity {_ci(m.get('sensitivity'))}, specificity {_ci(m.get('specificity'))}")
    return lines
