"""A synthetic dermoscopy-like data set in the HAM10000 layout (no patient data).

`make_synthetic(out)` writes `out/metadata.csv` (lesion_id,image_id,dx,dx_type,age,sex,
localization), `out/images/<image_id>.jpg` (200x150 JPEG, quality 90) and
`out/SYNTHETIC.txt`, which says the data are synthetic. Each lesion is a blob on a skin
background whose colours, colour variety, border irregularity, asymmetry, size, dots and
vessels depend on its class, each class with a look of its own (the demo's models must be
seen to learn); ~4% of lesions are drawn with a neighbouring class's looks so a classifier
cannot be perfect. Age, sex and body site are drawn per class. Some
lesions have several images (shifted, rotated, re-lit renderings of the same lesion, with
the same metadata). The same seed gives byte-identical files.

With `defects=True` a few problems are planted for the cleaning step to find (listed in
`out/defects.json`): missing ages, 'unknown' sex and site, ages -3 and "abc", one file of
random bytes, one truncated JPEG, one byte-identical image under a second image_id, and
one duplicated CSV row.

How a lesion is drawn lives in `dermfuse.data.lesion_drawing`; this module writes the data set
(metadata, file names, planted defects).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from dermfuse import HAM10000_CLASSES
from dermfuse.data.lesion_drawing import draw_lesion, render_lesion

__all__ = ["CLASS_SHARES", "SITES", "make_synthetic"]

CLASS_SHARES = {"nv": 0.40, "mel": 0.15, "bkl": 0.15, "bcc": 0.10, "akiec": 0.08, "vasc": 0.06, "df": 0.06}
"""Share of images per class: imbalanced like HAM10000, but not as extreme."""

SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot",
         "scalp", "neck", "hand", "ear", "genital", "acral")
"""HAM10000 body-site names ('unknown' is only written as a planted defect)."""

_FORMAT_VERSION = 1

# --- metadata per class: age mean/sd, P(male), dx_type shares, site weights (order of SITES)
_AGE = {"akiec": (67, 11), "bcc": (66, 13), "bkl": (63, 14), "df": (44, 13), "mel": (61, 15),
        "nv": (45, 15), "vasc": (42, 20)}
_MALE = {"akiec": 0.65, "bcc": 0.60, "bkl": 0.55, "df": 0.48, "mel": 0.58, "nv": 0.51, "vasc": 0.47}
_DX_TYPE = {"akiec": {"histo": 1.0}, "bcc": {"histo": 1.0}, "df": {"histo": 0.6, "consensus": 0.4},
            "mel": {"histo": 1.0}, "bkl": {"histo": 0.55, "consensus": 0.3, "confocal": 0.15},
            "nv": {"follow_up": 0.55, "histo": 0.35, "consensus": 0.1},
            "vasc": {"histo": 0.6, "consensus": 0.4}}
_SITE_W = {  # back, lower ext, trunk, upper ext, abdomen, face, chest, foot, scalp, neck, hand, ear, genital, acral
    "akiec": (9, 19, 1, 19, 2, 34, 3, 1, 5, 3, 5, 1, 0.2, 0.2),
    "bcc": (36, 11, 2, 10, 3, 19, 9, 1, 3, 2, 0.5, 0.5, 0.2, 0.1),
    "bkl": (18, 17, 7, 10, 4, 27, 6, 0.5, 3, 3, 1, 1, 0.2, 0.1),
    "df": (2, 75, 1, 18, 4, 0.2, 0.5, 0.5, 0.1, 0.2, 0.5, 0.1, 1, 0.1),
    "mel": (30, 17, 3, 18, 6, 10, 6, 3, 1, 3, 0.5, 1, 0.2, 0.3),
    "nv": (22, 22, 19, 10, 13, 1, 3, 4, 1, 1, 1, 0.3, 1, 0.3),
    "vasc": (13, 17, 25, 7, 20, 7, 5, 0.5, 2, 2, 2, 0.2, 0.2, 0.1),
}


# --- the data set -------------------------------------------------------------------------------


def _class_counts(n: int) -> dict[str, int]:
    """Images per class: the shares of n, every class at least once when n >= 7."""
    raw = {c: n * s for c, s in CLASS_SHARES.items()}
    counts = {c: int(math.floor(x)) for c, x in raw.items()}
    for c in sorted(raw, key=lambda c: counts[c] - raw[c])[: n - sum(counts.values())]:
        counts[c] += 1
    if n >= len(counts):
        for c in counts:
            if counts[c] == 0:
                counts[c], counts["nv"] = 1, counts["nv"] - 1
    return counts


def _metadata(rng: np.random.Generator, cls: str) -> dict[str, str]:
    mean, sd = _AGE[cls]
    age = float(np.clip(5 * round(rng.normal(mean, sd) / 5), 0, 85))
    types = _DX_TYPE[cls]
    p_site = np.array(_SITE_W[cls], dtype=float)
    return {
        "dx": cls,
        "dx_type": list(types)[int(rng.choice(len(types), p=list(types.values())))],
        "age": f"{age:.1f}",
        "sex": "male" if rng.random() < _MALE[cls] else "female",
        "localization": SITES[int(rng.choice(len(SITES), p=p_site / p_site.sum()))],
    }


def _plan(n: int, seed: int) -> list[tuple[str, int]]:
    """Lesions as (class, number of images), shuffled."""
    rng = np.random.default_rng([seed, 0])
    lesions: list[tuple[str, int]] = []
    for cls in HAM10000_CLASSES:
        left = _class_counts(n)[cls]
        while left > 0:
            k = min(left, int(rng.choice([1, 2, 3, 4], p=[0.72, 0.18, 0.07, 0.03])))
            lesions.append((cls, k))
            left -= k
    return [lesions[i] for i in rng.permutation(len(lesions))]


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / "SYNTHETIC.txt").exists():
        raise ValueError(f"{out} exists and is not empty; make_synthetic writes only into an empty "
                         "folder or one it wrote before")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for old in [*(out / "images").glob("*.jpg"), *(out / "masks").glob("*.png")]:  # a previous set: replace it whole
        old.unlink()
    for name in ("metadata.csv", "defects.json"):
        if (out / name).exists():
            (out / name).unlink()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _plant_defects(rows: list[dict[str, str]], files: dict[str, bytes], seed: int) -> dict:
    """Change rows/files in place; return what was planted, by kind (image ids).

    Missing age and 'unknown' sex/site are set on whole lesions (8 different lesions, the
    smallest first); the row- and file-level defects go to 6 rows of other lesions.
    """
    rng = np.random.default_rng([seed, 3])
    by_lesion: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_lesion.setdefault(r["lesion_id"], []).append(r)
    ids = list(by_lesion)
    order = sorted(rng.permutation(len(ids)).tolist(), key=lambda i: len(by_lesion[ids[i]]))
    lesions = [by_lesion[ids[i]] for i in order[:8]]
    others = [r for i in order[8:] for r in by_lesion[ids[i]]]
    if len(others) < 6:
        raise ValueError("too few lesions to plant every defect; use a larger n")
    pick = [others[i] for i in rng.choice(len(others), 6, replace=False)]
    report: dict = {"missing_age": [], "unknown_sex": [], "unknown_site": []}
    for les, (field, value, kind) in zip(lesions, [("age", "", "missing_age")] * 3
                                         + [("sex", "unknown", "unknown_sex")] * 2
                                         + [("localization", "unknown", "unknown_site")] * 3):
        for r in les:
            r[field] = value
            report[kind].append(r["image_id"])
    bad_age, bad_text, corrupt, truncated, dup_source, dup_row = pick
    bad_age["age"], bad_text["age"] = "-3", "abc"
    report["invalid_age"] = {bad_age["image_id"]: "-3", bad_text["image_id"]: "abc"}
    files[corrupt["image_id"]] = b"\x00NOT-AN-IMAGE" + rng.bytes(3000)
    report["corrupt_image"] = corrupt["image_id"]
    data = files[truncated["image_id"]]
    files[truncated["image_id"]] = data[: len(data) // 2]
    report["truncated_image"] = truncated["image_id"]

    def insert_after(row: dict[str, str], new: dict[str, str]) -> None:
        rows.insert(next(i for i, r in enumerate(rows) if r is row) + 1, new)

    dup_id = "ISIC_%07d" % (max(int(r["image_id"][5:]) for r in rows) + 1)
    insert_after(dup_source, {**dup_source, "image_id": dup_id})
    files[dup_id] = files[dup_source["image_id"]]
    report["duplicate_image"] = {"image_id": dup_id, "same_bytes_as": dup_source["image_id"]}
    insert_after(dup_row, dict(dup_row))
    report["duplicate_row"] = dup_row["image_id"]
    return report


def make_synthetic(
    out: str | os.PathLike,
    n: int = 600,
    seed: int = 0,
    defects: bool = False,
    size: tuple[int, int] = (200, 150),
    masks: bool = False,
) -> Path:
    """Write a synthetic HAM10000-layout data set of n images into `out`; return `out`.

    size: (width, height) of the images, 200x150 like the development set. The folder must
    be empty or hold an earlier synthetic set (which is replaced). With `defects=True`
    (needs n >= 20) metadata.csv gets n + 2 rows (a duplicated row, a duplicate image) and
    the planted problems are listed in `defects.json`. Same seed -> byte-identical files.
    With `masks=True` the lesion mask of every image is written as `masks/<image_id>.png`
    (uint8 0/255, the image's size); the other files are the same as without it.
    """
    n, (w, h) = int(n), (int(size[0]), int(size[1]))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if defects and n < 20:
        raise ValueError(f"defects=True needs n >= 20 to plant every defect, got n={n}")
    if w < 16 or h < 16:
        raise ValueError(f"size must be at least 16x16, got {size!r}")
    out = Path(out)
    _prepare_out(out)
    rows, files, lesion_masks = _draw_images(n, seed, (w, h), masks)
    planted = _plant_defects(rows, files, seed) if defects else {}

    for image_id, data in files.items():
        (out / "images" / f"{image_id}.jpg").write_bytes(data)
    if masks:
        if "duplicate_image" in planted:  # same bytes, same lesion
            dup = planted["duplicate_image"]
            lesion_masks[dup["image_id"]] = lesion_masks[dup["same_bytes_as"]]
        _write_masks(out / "masks", lesion_masks)
    columns = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _write_note(out, n, seed, defects, (w, h), planted)
    return out


def _draw_images(n: int, seed: int, size: tuple[int, int], masks: bool
                 ) -> tuple[list[dict[str, str]], dict[str, bytes], dict[str, np.ndarray]]:
    """The metadata rows, the JPEG bytes of every image and (with ``masks``) every image's
    lesion mask (H, W) bool, by image id; each lesion drawn from its own seeded generator."""
    lesions = _plan(n, seed)
    id_rng = np.random.default_rng([seed, 1])
    lesion_numbers = id_rng.choice(max(10_000, 4 * len(lesions)), len(lesions), replace=False)
    image_numbers = 24306 + id_rng.permutation(n)
    rows: list[dict[str, str]] = []
    files: dict[str, bytes] = {}
    lesion_masks: dict[str, np.ndarray] = {}
    j = 0
    for li, (cls, k) in enumerate(lesions):
        rng = np.random.default_rng([seed, 2, li])
        meta = _metadata(rng, cls)
        les = draw_lesion(rng, cls)
        for variant in range(k):
            image_id = "ISIC_%07d" % image_numbers[j]
            j += 1
            drawn: list[np.ndarray] | None = [] if masks else None
            files[image_id] = _jpeg(render_lesion(les, rng, size, variant, drawn))
            if drawn:
                lesion_masks[image_id] = drawn[0]
            rows.append({"lesion_id": "HAM_%07d" % lesion_numbers[li], "image_id": image_id, **meta})
    return rows, files, lesion_masks


def _write_masks(folder: Path, lesion_masks: dict[str, np.ndarray]) -> None:
    """``folder/<image_id>.png``: each mask as uint8 0/255."""
    folder.mkdir(exist_ok=True)
    for image_id, mask in lesion_masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{image_id}.png")


def _write_note(out: Path, n: int, seed: int, defects: bool, size: tuple[int, int], planted: dict) -> None:
    """SYNTHETIC.txt (what the data are and how they were made) and, with planted defects,
    defects.json."""
    w, h = size
    note = (
        "SYNTHETIC DATA - not real patients, not for any clinical use.\n"
        f"Generated by dermfuse.data.synth.make_synthetic(n={n}, seed={seed}, defects={defects}, "
        f"size=({w}, {h})), format version {_FORMAT_VERSION}.\n"
        "Lesion images are procedural drawings whose colour, border, size and texture depend on the class;\n"
        "age, sex and body site are drawn per class. HAM10000 layout: metadata.csv + images/<image_id>.jpg.\n"
    )
    if planted:
        note += "Planted defects (also in defects.json):\n" + json.dumps(planted, indent=1) + "\n"
        (out / "defects.json").write_text(json.dumps(planted, indent=1, sort_keys=True) + "\n")
    (out / "SYNTHETIC.txt").write_text(note)
