"""Decode images once, resize them, and keep them on disk as one uint8 array.

`load_image` and `resize_image` are the single source of decoding and resizing that the
cache, `predict` and `serve` share, so a model sees the same pixels in training and at
inference time. `build_cache` turns a table (one row per image, columns `image_id`,
`path`, optionally `sha1`) into a memory-mapped array `(N, H, W, 3)` uint8 stored under
`<cache root>/images/<key>.npy`, where the key hashes the images' ids and bytes, the size,
the resize method and the cache format version. A second call with the same inputs maps
the stored array and decodes nothing.

Cache root: `cache_dir` if given, else env `DERMFUSE_CACHE`, else `~/.cache/dermfuse`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dermfuse.errors import DataError, InputError
from dermfuse.image_size import size_hw
from dermfuse.io import atomic_write_text, temp_path

__all__ = [
    "CACHE_FORMAT_VERSION",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "RESIZE_METHODS",
    "CachedImages",
    "CACHE_PARTS",
    "build_cache",
    "cache_usage",
    "clear_cache",
    "cache_root",
    "cache_key",
    "decode_count",
    "load_image",
    "resize_image",
]

CACHE_FORMAT_VERSION = 2
"""Bump when the stored layout or the decode/resize code changes the pixels."""

MAX_IMAGE_PIXELS = 40_000_000
"""Images with more pixels than this (40 megapixels) are refused as decompression bombs."""

RESIZE_METHODS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

_decode_total = 0
_decode_lock = threading.Lock()
_open_lock = threading.Lock()


def decode_count() -> int:
    """Number of images `load_image` has decoded in this process (for tests and logs)."""
    return _decode_total


def _count_decode() -> None:
    global _decode_total
    with _decode_lock:
        _decode_total += 1


def _input_error(message: str, reason: str) -> InputError:
    """An InputError with a `reason` attribute that matches the cleaning report's reasons."""
    err = InputError(message)
    err.reason = reason  # type: ignore[attr-defined]
    return err


MIN_IMAGE_SIDE = 32
"""Images whose shorter side is under this many pixels are refused (`image_too_small`):
at that size there is no lesion left to see, and upscaling would invent it."""

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
_DIRECT_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", *_ALPHA_MODES)


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """8-bit RGB of any mode Pillow decodes, or InputError (`unsupported_image`) by mode.

    - 16-bit grey (I;16, I;16B, I;16L, I;16N) and 32-bit integer (I) holding 0..65535: the
      high byte (v >> 8), the same rule Pillow applies when it reads 16-bit RGB PNGs.
      Pillow's own convert('RGB') clips these at 255, a saturated white square.
    - transparency (RGBA, LA, PA, palette or grey with a transparent colour): composited
      onto black, i.e. each channel times alpha / 255, so hidden colour under transparent
      pixels never reaches the model.
    - palette, bilevel, grey, CMYK, YCbCr: Pillow's conversion (grey replicated; CMYK as
      (255 - c) * (255 - k) / 255, no colour profile applied).
    - F (32-bit float) and the rest (LAB, HSV, ...): refused by name, since their pixel
      range or colour space is not fixed.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        if values.ndim != 2:
            raise _input_error(f"image file {name!r} has an unsupported layout for mode {mode}", "unsupported_image")
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise _input_error(
                f"image file {name!r} is a 32-bit integer image (mode {mode}) with values "
                f"{low}..{high}, outside the 16-bit range 0..65535; save it as an 8- or 16-bit PNG",
                "unsupported_image",
            )
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    if mode not in _DIRECT_MODES:
        what = "32-bit floating-point pixels (mode F) have no fixed range" if mode == "F" else \
            f"pixel mode {mode} is not a colour space dermfuse converts"
        raise _input_error(
            f"image file {name!r}: {what}; expected 8- or 16-bit grey, RGB, RGBA, palette or "
            f"CMYK (save it as PNG or JPEG)",
            "unsupported_image",
        )
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def load_image(path_or_bytes: ImageSource) -> Image.Image:
    """Decode one image file (path or raw bytes) into an 8-bit RGB PIL image.

    EXIF orientation is applied; every mode Pillow decodes becomes correct 8-bit RGB or is
    refused by name (see `_to_rgb`: 16-bit grey scaled, alpha composited onto black,
    palette/grey/CMYK converted, float and exotic modes refused). Raises `InputError`
    naming the file and the reason for a missing, empty, unreadable, truncated, oversized
    (more than `MAX_IMAGE_PIXELS`, a decompression bomb), too small (shorter side under
    `MIN_IMAGE_SIDE`) or unsupported file; the error's `reason` attribute is one of
    `missing_image_file`, `empty_image`, `unreadable_image`, `truncated_image`,
    `image_too_large`, `image_too_small`, `unsupported_image`.
    """
    name, data = _read_source(path_or_bytes)
    img = _decode(data, name)
    if img.width == 0 or img.height == 0:
        raise _input_error(f"image file {name!r} has no pixels ({img.width}x{img.height})", "empty_image")
    if min(img.width, img.height) < MIN_IMAGE_SIDE:
        raise _input_error(
            f"image file {name!r} is {img.width}x{img.height} px; the shorter side must be at "
            f"least {MIN_IMAGE_SIDE} px",
            "image_too_small",
        )
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block: keep the pixels as stored
        pass
    try:
        img = _to_rgb(img, name)
    except InputError:
        raise
    except Exception as exc:  # a conversion Pillow cannot do is still this file's problem
        raise _input_error(
            f"image file {name!r} (mode {img.mode}) cannot be converted to RGB: {type(exc).__name__}: {exc}",
            "unsupported_image",
        ) from exc
    _count_decode()
    return img


def _read_source(path_or_bytes: ImageSource) -> tuple[str, bytes]:
    """(name for messages, the file's bytes); a missing, unreadable or empty file is refused."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        name = "<uploaded bytes>"
        data = bytes(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        name = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _input_error(f"image file {name!r} not found", "missing_image_file") from None
        except OSError as exc:
            raise _input_error(f"image file {name!r} cannot be read: {exc}", "unreadable_image") from exc
    if len(data) == 0:
        raise _input_error(f"image file {name!r} is empty (0 bytes)", "empty_image")
    return name, data


def _decode(data: bytes, name: str) -> Image.Image:
    """Pillow's full decode of ``data``, every failure an `InputError` naming the file:
    decompression bombs, truncation, unknown formats, decoder errors."""
    try:
        # Header only. PIL warns (and only warns) between its own limit and twice it: make that
        # an error. catch_warnings is process-wide, hence the lock; the decode below runs outside it.
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise _input_error(
                f"image file {name!r} is {w}x{h} = {w * h:,} pixels, more than the limit of "
                f"{MAX_IMAGE_PIXELS:,} (possible decompression bomb)",
                "image_too_large",
            )
        if ImageFile.LOAD_TRUNCATED_IMAGES and img.format == "JPEG" and b"\xff\xd9" not in data[-4096:]:
            # someone told Pillow to pad truncated files silently; a JPEG must still end (EOI)
            raise _input_error(f"image file {name!r} is truncated: JPEG has no end marker", "truncated_image")
        img.load()  # full decode: truncation shows only here
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _input_error(
            f"image file {name!r} is too large (possible decompression bomb): {exc}", "image_too_large"
        ) from exc
    except UnidentifiedImageError as exc:
        raise _input_error(
            f"image file {name!r} is not a readable image ({len(data)} bytes, format not recognised)",
            "unreadable_image",
        ) from exc
    except Exception as exc:  # any decoder failure means the file cannot be used
        text = f"{type(exc).__name__}: {exc}"
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise _input_error(f"image file {name!r} is truncated: {text}", "truncated_image") from exc
        raise _input_error(f"image file {name!r} cannot be decoded: {text}", "unreadable_image") from exc
    return img


def resize_image(
    img: Image.Image | np.ndarray, size: int | tuple[int, int], method: str = "bilinear"
) -> np.ndarray:
    """Squash-resize an RGB image (aspect ratio not kept, like the paper's 128x128).

    img: PIL image or uint8 array (H, W, 3). size: int (square) or (height, width).
    method: "bilinear", "bicubic", "nearest" or "lanczos" (PIL, antialiased when shrinking).
    Returns a C-contiguous uint8 array (h, w, 3).
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r} unknown; expected one of {sorted(RESIZE_METHODS)}")
    h, w = size_hw(size)
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image array must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
        img = Image.fromarray(img)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), resample=RESIZE_METHODS[method])
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else env `DERMFUSE_CACHE`, else `~/.cache/dermfuse`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DERMFUSE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dermfuse"


def _file_sha1(path: str) -> str:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise _input_error(f"image file {path!r} not found", "missing_image_file") from None
    return h.hexdigest()


def _check_table(table: pd.DataFrame) -> None:
    missing = [c for c in ("image_id", "path") if c not in table.columns]
    if missing:
        raise DataError(f"image cache needs the columns image_id and path; missing {missing}")
    if len(table) == 0:
        raise DataError("image cache: the table has no rows")
    no_path = table["path"].isna()
    if no_path.any():
        ids = table.loc[no_path, "image_id"].astype(str).tolist()
        raise DataError(
            f"image cache: {len(ids)} row(s) have no image file, e.g. image_id {ids[0]!r}; "
            "drop them first (dermfuse.data.clean does)"
        )


def cache_key(table: pd.DataFrame, size: int | tuple[int, int] = 128, method: str = "bilinear") -> str:
    """sha256 hex of the format version, size, method and every row's image_id + sha1.

    Uses the table's `sha1` column where present, else hashes each file's bytes.
    """
    _check_table(table)
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r} unknown; expected one of {sorted(RESIZE_METHODS)}")
    h, w = size_hw(size)
    digest = hashlib.sha256(f"dermfuse-image-cache v{CACHE_FORMAT_VERSION}\n{h}x{w}\n{method}\n".encode())
    sha1s = table["sha1"] if "sha1" in table.columns else pd.Series([None] * len(table), index=table.index)
    for image_id, path, sha1 in zip(table["image_id"], table["path"], sha1s):
        if not isinstance(sha1, str) or not sha1:
            sha1 = _file_sha1(str(path))
        digest.update(f"{image_id}\0{sha1}\n".encode())
    return digest.hexdigest()


@dataclass
class CachedImages:
    """Images of a table, decoded and resized, in table row order.

    images: read-only np.memmap uint8 (N, H, W, 3). key: the cache key (sha256 hex).
    decoded: images decoded by this call (0 when the cache was reused). path: the .npy file.
    """

    images: np.ndarray
    key: str
    decoded: int
    path: Path
    image_ids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)


def _load_existing(npy: Path, meta: Path, image_ids: list[str], shape: tuple[int, ...]) -> np.ndarray | None:
    """The stored array if both files exist and agree with the request, else None."""
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if info.get("image_ids") != image_ids or arr.shape != shape or arr.dtype != np.uint8:
        return None
    return arr


def build_cache(
    table: pd.DataFrame,
    size: int | tuple[int, int] = 128,
    method: str = "bilinear",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> CachedImages:
    """Decode and resize every row's image once; reuse the stored array on later calls.

    table: rows with `image_id`, `path` (and optionally `sha1`). size: int or (h, w).
    Returns `CachedImages` with `images` uint8 (N, h, w, 3) in table row order. The array
    is written under a temporary name and renamed, then the `<key>.json` index is written
    the same way, so an interrupted build never looks complete. Raises `DataError` for
    rows without a path and `InputError` (naming the file) for an image that cannot be read.
    """
    h, w = size_hw(size)
    key = cache_key(table, (h, w), method)
    folder = cache_root(cache_dir) / "images"
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    image_ids = [str(i) for i in table["image_id"]]
    shape = (len(table), h, w, 3)

    existing = _load_existing(npy, meta, image_ids, shape)
    if existing is not None:
        return CachedImages(existing, key, 0, npy, tuple(image_ids))

    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(npy, ".npy")
    try:
        _decode_into(tmp, [str(p) for p in table["path"]], image_ids, (h, w), method, progress)
        os.replace(tmp, npy)
        info = {
            "format_version": CACHE_FORMAT_VERSION,
            "key": key,
            "size": [h, w],
            "method": method,
            "n": len(table),
            "image_ids": image_ids,
        }
        atomic_write_text(meta, json.dumps(info))
    finally:
        if tmp.exists():
            tmp.unlink()
    return CachedImages(np.load(npy, mmap_mode="r"), key, len(table), npy, tuple(image_ids))


def _decode_into(tmp: Path, paths: list[str], image_ids: list[str], hw: tuple[int, int], method: str,
                 progress: bool) -> None:
    """Decode and resize every image, in a thread pool, into a new .npy file ``tmp``
    (N, h, w, 3) uint8; the first unreadable image stops the rest and is raised, naming its row."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    h, w = hw

    def work(i: int) -> np.ndarray:
        try:
            return resize_image(load_image(paths[i]), (h, w), method)
        except InputError as exc:
            reason = getattr(exc, "reason", "unreadable_image")
            raise _input_error(f"{exc} (row {i}, image_id {image_ids[i]!r})", reason) from exc

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    workers = max(1, min(8, os.cpu_count() or 1))
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), h, w, 3))
    pool = ThreadPoolExecutor(workers)  # PIL decodes and resizes without holding the GIL
    try:
        with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar:
            task = bar.add_task(f"caching {len(paths)} images at {h}x{w} ({method})", total=len(paths))
            for i, arr in enumerate(pool.map(work, range(len(paths)))):
                out[i] = arr
                bar.advance(task)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on error: stop, don't decode the rest
    out.flush()
    del out


CACHE_PARTS = ("images", "heatmaps", "image_checks")
"""The cache root's sub-folders: decoded images, CAM heatmaps, memoised image checks."""


def cache_usage(cache_dir: str | os.PathLike | None = None) -> dict:
    """{"root": str, "parts": {part: {"files": n, "bytes": b}}, "bytes": total} of the cache."""
    root = cache_root(cache_dir)
    parts = {}
    for part in CACHE_PARTS:
        files = [p for p in (root / part).rglob("*") if p.is_file()] if (root / part).is_dir() else []
        parts[part] = {"files": len(files), "bytes": int(sum(p.stat().st_size for p in files))}
    return {"root": str(root), "parts": parts, "bytes": sum(p["bytes"] for p in parts.values())}


def clear_cache(cache_dir: str | os.PathLike | None = None) -> dict:
    """Delete the files of every part in `CACHE_PARTS` (nothing else under the root);
    returns `cache_usage` as it was before."""
    import shutil

    before = cache_usage(cache_dir)
    root = cache_root(cache_dir)
    for part in CACHE_PARTS:
        if (root / part).is_dir():
            shutil.rmtree(root / part)
    return before
