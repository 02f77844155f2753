"""Images that are not dermoscopic lesions, made offline: flat colours, noise, gradients,
text renderings and (where scikit-image is installed) the photographs of ``skimage.data``.
`dermfuse release` chooses the OOD score on one seed of the synthetic kinds plus the design
photographs (the sample pictures scikit-learn and matplotlib ship, with crops of them) and
measures it on another seed plus the photographs of ``skimage.data``, which the choice never
sees."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..image_size import Size, size_hw

__all__ = ["SYNTHETIC_KINDS", "SKIMAGE_PHOTOS", "synthetic_ood", "skimage_photos", "design_photos"]

SYNTHETIC_KINDS = ("flat", "noise", "gradient", "text")
# the skimage.data images that ship inside the wheel (no download)
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "chelsea", "coffee", "coins", "colorwheel", "horse",
                  "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket",
                  "text", "clock", "brick", "grass", "gravel", "microaneurysms")


def _text_image(rng: np.random.Generator, size: Size) -> np.ndarray:
    h, w = size_hw(size)
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(255 - v for v in bg)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    words = ["dermfuse", "lesion", "hello", "2026", "ABCDEF", "scan", "report", "page 3"]
    for row in range(0, h, 12):
        draw.text((int(rng.integers(0, 8)), row), " ".join(rng.choice(words, 4)), fill=fg, font=font)
    return np.asarray(img)


def synthetic_ood(size: Size, n_per_kind: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """kind -> (n, h, w, 3) uint8 for each of SYNTHETIC_KINDS at ``size`` (a side or (h, w));
    'flat' includes mid grey."""
    h, w = size_hw(size)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    flat = rng.integers(0, 256, (n_per_kind, 1, 1, 3))
    flat[0] = 128  # the flat grey of the acceptance test
    out["flat"] = np.broadcast_to(flat, (n_per_kind, h, w, 3)).astype(np.uint8).copy()
    noise = []
    for i in range(n_per_kind):
        if i % 2:
            noise.append(rng.integers(0, 256, (h, w, 3)))
        else:
            noise.append(np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (h, w, 3)), 0, 255))
    out["noise"] = np.stack(noise).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    yy, xx = yy / max(h - 1, 1), xx / max(w - 1, 1)
    grads = []
    for _ in range(n_per_kind):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(np.cos(angle) * xx + np.sin(angle) * yy, 0, 1)[..., None]
        if rng.random() < 0.3:
            t = np.hypot(xx - 0.5, yy - 0.5)[..., None] / 0.71  # radial
        grads.append(a * (1 - t) + b * t)
    out["gradient"] = np.stack(grads).astype(np.uint8)
    out["text"] = np.stack([_text_image(rng, size) for _ in range(n_per_kind)])
    return out


def skimage_photos(size: Size, method: str = "bilinear") -> dict[str, np.ndarray]:
    """name -> (h, w, 3) uint8 for the skimage.data pictures that load offline (empty
    without scikit-image), resized like every input (`dermfuse.data.cache.resize_image`)."""
    from ..data.cache import resize_image

    try:
        import skimage.data as data
    except ImportError:
        return {}
    out = {}
    for name in SKIMAGE_PHOTOS:
        try:
            arr = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a picture that needs a download is skipped
            continue
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        arr = arr[..., :3].astype(np.uint8)
        out[name] = resize_image(np.ascontiguousarray(arr), size, method)
    return out


def _sample_pictures() -> list[np.ndarray]:
    """The photographs scikit-learn and matplotlib ship (RGB uint8; none missing offline)."""
    import os

    pics: list[np.ndarray] = []
    try:
        from sklearn.datasets import load_sample_images

        pics += [np.asarray(a, np.uint8) for a in load_sample_images().images]
    except Exception:  # noqa: BLE001 - an older scikit-learn without the pictures
        pass
    try:
        import matplotlib

        folder = os.path.join(matplotlib.get_data_path(), "sample_data")
        for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with Image.open(path) as im:
                    pics.append(np.asarray(im.convert("RGB")))
    except ImportError:
        pass
    return pics


def design_photos(size: Size, crops: int = 7, seed: int = 1, method: str = "bilinear") -> np.ndarray:
    """(n, h, w, 3) uint8: each sample picture of scikit-learn and matplotlib whole and
    as ``crops`` random crops of the input's aspect ratio (square for a square input; their
    height 30-90 % of the picture's shorter side, less where the width would not fit),
    resized like every input. Used to choose the OOD score, never to measure it."""
    from ..data.cache import resize_image

    th, tw = size_hw(size)
    rng = np.random.default_rng(seed)
    out = []
    for pic in _sample_pictures():
        out.append(resize_image(np.ascontiguousarray(pic), size, method))
        h, w = pic.shape[:2]
        for _ in range(crops):
            side = int(min(h, w) * rng.uniform(0.3, 0.9))
            ch, cw = side, max(1, round(side * tw / th))
            if cw > w:  # a wide crop of a tall picture: shrink both sides
                ch, cw = max(1, round(w * th / tw)), w
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            out.append(resize_image(np.ascontiguousarray(pic[y0:y0 + ch, x0:x0 + cw]), size, method))
    return np.stack(out) if out else np.zeros((0, *size_hw(size), 3), np.uint8)
