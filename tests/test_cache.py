"""Image decoding, resizing and the on-disk image cache."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from dermfuse.data import cache
from dermfuse.data.cache import build_cache, decode_count, load_image, resize_image
from dermfuse.errors import DataError, InputError


def _write_images(folder: Path) -> pd.DataFrame:
    """Five small images (JPEG and PNG, different sizes) and their table."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (w, h) in enumerate([(40, 32), (32, 40), (64, 48), (40, 32), (50, 37)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ext = "png" if i % 2 else "jpg"
        path = folder / f"img_{i}.{ext}"
        Image.fromarray(arr).save(path)
        rows.append({"image_id": f"img_{i}", "path": str(path)})
    return pd.DataFrame(rows)


@pytest.fixture()
def table(tmp_path: Path) -> pd.DataFrame:
    return _write_images(tmp_path / "images")


def test_cache_matches_direct_decode_and_resize(table, tmp_path):
    cached = build_cache(table, size=32, cache_dir=tmp_path / "cache", progress=False)
    assert cached.images.shape == (5, 32, 32, 3)
    assert cached.images.dtype == np.uint8
    assert cached.decoded == 5
    assert cached.path == tmp_path / "cache" / "images" / f"{cached.key}.npy"
    assert cached.path.with_suffix(".json").is_file()
    for i, path in enumerate(table["path"]):
        np.testing.assert_array_equal(cached.images[i], resize_image(load_image(path), 32, "bilinear"))


def test_second_build_decodes_nothing_and_keeps_the_key(table, tmp_path):
    first = build_cache(table, size=24, cache_dir=tmp_path, progress=False)
    before = decode_count()
    second = build_cache(table, size=24, cache_dir=tmp_path, progress=False)
    assert second.decoded == 0
    assert decode_count() == before
    assert second.key == first.key and second.path == first.path
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))


def test_size_method_and_content_change_the_key(table, tmp_path):
    key = cache.cache_key(table, 32, "bilinear")
    assert cache.cache_key(table, 64, "bilinear") != key
    assert cache.cache_key(table, (32, 40), "bilinear") != key
    assert cache.cache_key(table, 32, "bicubic") != key
    with_sha1 = table.assign(sha1=["0" * 40] * len(table))
    assert cache.cache_key(with_sha1, 32, "bilinear") != key
    built = build_cache(table, size=(16, 20), cache_dir=tmp_path, progress=False)
    assert built.images.shape == (5, 16, 20, 3)


def test_the_sha1_column_stands_for_the_file_bytes(table):
    import hashlib

    sha1 = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in table["path"]]
    assert cache.cache_key(table.assign(sha1=sha1), 32) == cache.cache_key(table, 32)


def test_incomplete_cache_is_rebuilt(table, tmp_path):
    first = build_cache(table, size=16, cache_dir=tmp_path, progress=False)
    first.path.with_suffix(".json").unlink()  # as if the process died before the index was written
    again = build_cache(table, size=16, cache_dir=tmp_path, progress=False)
    assert again.decoded == len(table)
    assert not list((tmp_path / "images").glob(".*tmp"))


def test_cache_root_from_environment(table, tmp_path, monkeypatch):
    monkeypatch.setenv("DERMFUSE_CACHE", str(tmp_path / "env_cache"))
    built = build_cache(table, size=8, progress=False)
    assert built.path.parent == tmp_path / "env_cache" / "images"


def test_corrupt_file_raises_input_error_naming_it(table, tmp_path):
    bad = tmp_path / "broken_lesion.jpg"
    bad.write_bytes(b"\x00not an image" * 50)
    with pytest.raises(InputError, match="broken_lesion.jpg") as info:
        load_image(bad)
    assert info.value.reason == "unreadable_image"
    table.loc[2, "path"] = str(bad)
    with pytest.raises(InputError, match="broken_lesion.jpg"):
        build_cache(table, size=8, cache_dir=tmp_path / "c", progress=False)


def test_truncated_and_empty_files(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(np.full((60, 80, 3), 120, np.uint8)).save(buf, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match="cut.jpg.*truncated") as info:
        load_image(cut)
    assert info.value.reason == "truncated_image"
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's global setting
    with pytest.raises(InputError, match="cut.jpg.*truncated"):
        load_image(cut)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.jpg.*empty"):
        load_image(empty)
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "absent.jpg")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_raises_input_error(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(10_000, 10_000))
    with pytest.raises(InputError, match="bomb.png.*decompression bomb") as info:
        load_image(bomb)
    assert info.value.reason == "image_too_large"
    for side in (7_000, 20_000):  # under PIL's own warning limit; beyond its hard limit
        with pytest.raises(InputError, match="decompression bomb") as info:
            load_image(_png_claiming(side, side))
        assert info.value.reason == "image_too_large"


def test_load_image_gives_rgb_from_bytes_and_other_modes():
    buf = io.BytesIO()
    Image.new("RGBA", (40, 32), (10, 20, 30, 128)).save(buf, "PNG")
    img = load_image(buf.getvalue())
    assert img.mode == "RGB" and img.size == (40, 32)
    buf = io.BytesIO()
    Image.new("L", (32, 32), 77).save(buf, "PNG")
    assert np.asarray(load_image(buf.getvalue()))[0, 0].tolist() == [77, 77, 77]


def test_resize_image_methods_and_errors():
    arr = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    for method in ("bilinear", "bicubic", "nearest", "lanczos"):
        out = resize_image(arr, (12, 16), method)
        assert out.shape == (12, 16, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(resize_image(arr, (30, 40)), arr)
    with pytest.raises(ValueError, match="area"):
        resize_image(arr, 8, "area")
    with pytest.raises(ValueError, match="positive"):
        resize_image(arr, 0)


def test_rows_without_a_file_are_a_data_error(table, tmp_path):
    table.loc[1, "path"] = None
    with pytest.raises(DataError, match="img_1"):
        build_cache(table, size=8, cache_dir=tmp_path, progress=False)
