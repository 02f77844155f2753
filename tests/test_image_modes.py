"""Every image mode Pillow decodes reaches the model as correct 8-bit RGB, or is refused by
name. Each case writes a file, sends it through what the model receives (the cache,
`prepare_image` of predict / cam / serve), and compares with an independent numpy
conversion of the same stored pixels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermfuse.data.cache import build_cache, load_image
from dermfuse.errors import InputError

H, W = 36, 48  # not square, above MIN_IMAGE_SIDE: resizing to (H, W) is the identity
_rng = np.random.default_rng(7)
RGB = _rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
GREY16 = _rng.integers(0, 65536, (H, W), dtype=np.uint16)
ALPHA = _rng.integers(0, 256, (H, W), dtype=np.uint8)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): samples (H, W[, C]) uint16."""
    rows = samples.reshape(samples.shape[0], -1).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", samples.shape[1], samples.shape[0], 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw)) \
        + _png_chunk(b"IEND", b"")


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.rint(rgb.astype(float) * alpha[..., None] / 255.0).astype(np.uint8)


def _case_grey16():
    return _png16(GREY16, 0), np.repeat((GREY16 >> 8).astype(np.uint8)[..., None], 3, 2), 0


def _case_rgb16():
    rgb16 = _rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    return _png16(rgb16, 2), (rgb16 >> 8).astype(np.uint8), 0


def _case_rgba16():
    rgba16 = _rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
    hi = (rgba16 >> 8).astype(np.uint8)
    return _png16(rgba16, 6), _over_black(hi[..., :3], hi[..., 3]), 1


def _case_palette():
    pal = Image.fromarray(RGB).quantize(64)
    lut = np.array(pal.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    return _save(pal), lut[np.asarray(pal)], 0


def _case_palette_transparent():
    pal = Image.fromarray(RGB).quantize(16)
    idx = np.asarray(pal)
    lut = np.array(pal.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    alpha = np.full(256, 255, np.uint8)
    alpha[3] = 0  # palette entry 3 fully transparent
    data = _save(pal, transparency=bytes(alpha[:16]))
    return data, _over_black(lut[idx], alpha[idx]), 1


def _case_rgba():
    rgba = np.dstack([RGB, ALPHA])
    return _save(Image.fromarray(rgba, "RGBA")), _over_black(RGB, ALPHA), 1


def _case_la():
    grey = RGB[..., 0]
    return _save(Image.fromarray(np.dstack([grey, ALPHA]), "LA")), \
        _over_black(np.repeat(grey[..., None], 3, 2), ALPHA), 1


def _case_grey():
    grey = RGB[..., 1]
    return _save(Image.fromarray(grey, "L")), np.repeat(grey[..., None], 3, 2), 0


def _case_bilevel():
    bits = RGB[..., 2] > 127
    return _save(Image.fromarray(bits).convert("1")), np.repeat((bits * 255).astype(np.uint8)[..., None], 3, 2), 0


def _case_cmyk():
    cmyk = _rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    data = _save(Image.fromarray(cmyk, "CMYK"), "TIFF")
    c, m, y, k = (cmyk[..., i].astype(float) for i in range(4))
    rgb = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)], -1) / 255.0
    return data, np.rint(rgb).astype(np.uint8), 1


def _case_exif_rotated():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = _save(Image.fromarray(RGB), "PNG", exif=exif)
    return data, np.rot90(RGB, k=-1), 0  # displayed shape (W, H)


CASES = {
    "16-bit grey PNG (I;16)": _case_grey16,
    "16-bit RGB PNG": _case_rgb16,
    "16-bit RGBA PNG": _case_rgba16,
    "palette": _case_palette,
    "palette with transparency": _case_palette_transparent,
    "RGBA": _case_rgba,
    "grey + alpha (LA)": _case_la,
    "grey (L)": _case_grey,
    "bilevel (1)": _case_bilevel,
    "CMYK": _case_cmyk,
    "EXIF orientation 6": _case_exif_rotated,
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mode_reaches_the_model_as_its_independent_rgb(case, tmp_path):
    data, expected, tolerance = CASES[case]()
    path = tmp_path / "img.png"
    path.write_bytes(data)
    h, w = expected.shape[:2]
    cached = build_cache(pd.DataFrame({"image_id": ["a"], "path": [str(path)]}), size=(h, w),
                         cache_dir=tmp_path / "cache", progress=False)
    got = np.asarray(cached.images[0]).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected.astype(int)).max() <= tolerance, case
    np.testing.assert_array_equal(np.asarray(load_image(data)), cached.images[0])  # bytes == path


def test_predict_and_cam_path_receive_the_same_pixels(tmp_path):
    from _bundles import make_bundle
    from dermfuse.inference.bundle import load_bundle
    from dermfuse.inference.predict import prepare_image

    bundle = load_bundle(make_bundle(tmp_path / "b", image_size=64))
    data, expected, _ = _case_grey16()
    want = np.asarray(Image.fromarray(expected).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(prepare_image(bundle, data), want)


def test_a_16_bit_png_gets_the_answer_of_its_8_bit_conversion(tmp_path):
    """The defect: 16-bit grey reached the model as a saturated white square."""
    from fastapi.testclient import TestClient

    from _bundles import make_bundle
    from dermfuse.inference.bundle import load_bundle
    from dermfuse.inference.predict import predict_one
    from dermfuse.serve.app import create_app

    bundle = load_bundle(make_bundle(tmp_path / "b", image_size=48))
    data, expected, _ = _case_grey16()
    as8 = _save(Image.fromarray(expected))
    p16 = predict_one(bundle, data, 40, "male", "back", explain=False)
    p8 = predict_one(bundle, as8, 40, "male", "back", explain=False)
    assert p16.image.mean() < 200  # not a white square
    assert p16.probabilities == pytest.approx(p8.probabilities, abs=1e-6)
    with TestClient(create_app(bundle)) as client:
        r = client.post("/predict", files={"image": ("x.png", data, "image/png")},
                        data={"age": "40", "sex": "male", "site": "back"})
    assert r.status_code == 200, r.text
    assert r.json()["probabilities"] == pytest.approx(p8.probabilities, abs=1e-5)


@pytest.mark.parametrize("mode, make", [
    ("F", lambda: Image.fromarray(_rng.random((H, W)).astype(np.float32), "F")),
    ("I", lambda: Image.fromarray((_rng.integers(-5, 70000, (H, W))).astype(np.int32), "I")),
])
def test_modes_without_a_fixed_range_are_refused_by_name(mode, make):
    data = _save(make(), "TIFF")
    with pytest.raises(InputError, match=f"mode {mode}") as info:
        load_image(data)
    assert info.value.reason == "unsupported_image"


@pytest.mark.parametrize("size", [(31, 100), (100, 31), (8, 8)])
def test_an_image_under_the_minimum_side_is_refused_naming_both_sizes(size):
    from dermfuse.data.cache import MIN_IMAGE_SIDE

    data = _save(Image.new("RGB", size, (120, 80, 60)))
    with pytest.raises(InputError, match=rf"{size[0]}x{size[1]} px.*at least {MIN_IMAGE_SIDE} px") as info:
        load_image(data)
    assert info.value.reason == "image_too_small"
    load_image(_save(Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE))))  # the minimum itself is fine


def test_cleaning_drops_tiny_and_unsupported_images_by_reason(tmp_path):
    from dermfuse.data.clean import clean
    from dermfuse.data.formats import read_dataset

    (tmp_path / "images").mkdir()
    rows = []
    files = {"ok": _save(Image.fromarray(RGB)), "tiny": _save(Image.new("RGB", (20, 20))),
             "float": _save(Image.fromarray(_rng.random((H, W)).astype(np.float32), "F"), "TIFF"),
             "grey16": _case_grey16()[0]}
    for name, data in files.items():
        (tmp_path / "images" / f"{name}.png").write_bytes(data)
        rows.append(dict(lesion_id=f"L_{name}", image_id=name, dx="nv", age=40, sex="male", localization="back"))
    pd.DataFrame(rows).to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    table, report = clean(read_dataset(tmp_path), progress=False)
    reasons = {e["image_id"]: e["reason"] for e in report.dropped}
    assert reasons == {"tiny": "image_too_small", "float": "unsupported_image"}
    assert sorted(table["image_id"]) == ["grey16", "ok"]
