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
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dermfuse import HAM10000_CLASSES

__all__ = ["CLASS_SHARES", "SITES", "make_synthetic"]

CLASS_SHARES = {"nv": 0.40, "mel": 0.15, "bkl": 0.15, "bcc": 0.10, "akiec": 0.08, "vasc": 0.06, "df": 0.06}
"""Share of images per class: imbalanced like HAM10000, but not as extreme."""

SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot",
         "scalp", "neck", "hand", "ear", "genital", "acral")
"""HAM10000 body-site names ('unknown' is only written as a planted defect)."""

_FORMAT_VERSION = 1
_BORROW_RATE = 0.04  # share of lesions drawn with a neighbouring class's appearance
_NEIGHBOURS = {"mel": ("nv", "bkl"), "nv": ("mel", "bkl", "df"), "bkl": ("mel", "akiec", "nv"),
               "bcc": ("akiec", "vasc"), "akiec": ("bcc", "bkl"), "df": ("nv", "bkl"), "vasc": ("bcc", "mel")}

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


@dataclass(frozen=True)
class _Style:
    """How a class looks; ranges are (lo, hi) drawn uniformly per lesion."""

    palette: tuple[tuple[int, int, int], ...]  # main colour first, then patch colours
    radius: tuple[float, float]  # lesion radius / half the short image side
    asym: tuple[float, float]  # amplitude of the 1st-3rd border harmonics (shape asymmetry)
    irregular: tuple[float, float]  # amplitude of the 4th-9th harmonics (ragged border)
    edge: tuple[float, float]  # border blur, px at 150 px height
    variegation: tuple[float, float]  # 0 = one colour, 1 = patches of every palette colour
    opacity: tuple[float, float]
    dots: tuple[int, int]  # dots / globules
    network: float = 0.0  # probability of a pigment network
    kind: str = ""  # extra structure: ring, lobules, vessels, scale, cysts


_STYLES = {
    # melanoma: large, asymmetric, ragged; dark brown, black, blue-grey, tan, red, regression white
    "mel": _Style(palette=((95, 58, 42), (38, 28, 30), (105, 112, 140), (155, 105, 72), (170, 85, 85),
                           (215, 200, 205)),
                  radius=(0.45, 0.85), asym=(0.10, 0.24), irregular=(0.05, 0.13), edge=(1.0, 3.0),
                  variegation=(0.65, 1.0), opacity=(0.85, 1.0), dots=(4, 20), network=0.4),
    # naevus: small, round, one brown
    "nv": _Style(palette=((132, 84, 56), (105, 65, 45), (160, 112, 80)),
                 radius=(0.28, 0.6), asym=(0.0, 0.06), irregular=(0.0, 0.035), edge=(1.5, 4.0),
                 variegation=(0.0, 0.25), opacity=(0.75, 0.95), dots=(0, 6), network=0.5),
    # benign keratosis: yellow-tan, waxy mottle, sharp border, fissures, milia / comedo dots
    "bkl": _Style(palette=((188, 150, 88), (160, 118, 70), (208, 176, 120), (105, 72, 56)),
                  radius=(0.38, 0.78), asym=(0.04, 0.12), irregular=(0.03, 0.08), edge=(0.8, 2.0),
                  variegation=(0.3, 0.7), opacity=(0.7, 0.9), dots=(2, 10), kind="cysts"),
    # basal cell carcinoma: translucent pearly pink, shiny white, blue-grey nests, arborizing vessels
    "bcc": _Style(palette=((222, 158, 160), (240, 215, 215), (95, 100, 125)),
                  radius=(0.32, 0.62), asym=(0.03, 0.1), irregular=(0.03, 0.08), edge=(2.0, 4.0),
                  variegation=(0.3, 0.6), opacity=(0.55, 0.8), dots=(0, 3), kind="vessels"),
    # actinic keratosis / Bowen: red, ill-defined, white-yellow scale
    "akiec": _Style(palette=((210, 112, 105), (190, 90, 90), (225, 150, 130)),
                    radius=(0.45, 0.85), asym=(0.05, 0.15), irregular=(0.06, 0.14), edge=(5.0, 9.0),
                    variegation=(0.2, 0.5), opacity=(0.55, 0.8), dots=(0, 4), kind="scale"),
    # dermatofibroma: small, brown ring fading into the skin, pale centre
    "df": _Style(palette=((135, 88, 62), (230, 212, 205), (160, 110, 82)),
                 radius=(0.28, 0.48), asym=(0.0, 0.06), irregular=(0.01, 0.04), edge=(4.0, 8.0),
                 variegation=(0.0, 0.2), opacity=(0.7, 0.9), dots=(0, 3), network=0.3, kind="ring"),
    # vascular: small, red / purple lagoons split by pale septa
    "vasc": _Style(palette=((180, 32, 58), (112, 40, 92), (205, 60, 80), (140, 25, 50)),
                   radius=(0.18, 0.42), asym=(0.02, 0.08), irregular=(0.03, 0.08), edge=(1.0, 2.0),
                   variegation=(0.4, 0.8), opacity=(0.85, 1.0), dots=(0, 2), kind="lobules"),
}

_SKIN_TONES = np.array([(236, 196, 186), (226, 206, 212), (240, 184, 164), (218, 178, 170), (232, 214, 206)],
                       dtype=np.float32)


# --- noise and small drawing helpers ---------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Smooth noise (h, w) float32, about N(0, 1): a random grid upsampled bicubically."""
    grid = rng.standard_normal(cells).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC))


def _sample_grid(
    grid: np.ndarray, to_lesion: tuple[float, ...], size: tuple[int, int], extent: float = 1.6
) -> np.ndarray:
    """Bilinear lookup of grid (G, G), spanning lesion coordinates [-extent, extent]^2, at
    every pixel of a (w, h) image; to_lesion = (a, b, c, d, e, f) maps pixel (x, y) to
    lesion coordinates (a x + b y + c, d x + e y + f). Pixels outside the grid get 0."""
    g = 0.5 * (grid.shape[0] - 1) / extent  # lesion units -> grid cells
    a, b, c, d, e, f = to_lesion
    off = 0.5 * (grid.shape[0] - 1) + 0.5  # grid centre, in PIL's pixel-centre convention
    coeffs = (a * g, b * g, c * g + off, d * g, e * g, f * g + off)
    img = Image.fromarray(grid.astype(np.float32), mode="F")
    out = img.transform(size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _blend(img: np.ndarray, colour, alpha: np.ndarray) -> None:
    """img (H, W, 3) <- img * (1 - alpha) + colour * alpha, in place; alpha (H, W) in [0, 1]."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += np.asarray(colour, dtype=np.float32) * a


def _stroke_mask(size: tuple[int, int], lines: list[np.ndarray], widths: list[int], blur: float) -> np.ndarray:
    """Anti-aliased-looking mask (H, W) in [0, 1] of polylines (each (K, 2) in pixel x, y)."""
    layer = Image.new("L", size, 0)
    draw = ImageDraw.Draw(layer)
    for pts, width in zip(lines, widths):
        draw.line([tuple(p) for p in np.round(pts, 1).tolist()], fill=255, width=int(width), joint="curve")
    if blur > 0:
        layer = layer.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(layer, dtype=np.float32) / 255.0


# --- one lesion: parameters drawn once, rendered once per image --------------------------------


@dataclass
class _Lesion:
    style: _Style
    radius: float
    aspect: float
    angle: float
    harmonics: np.ndarray  # (9, 2): amplitude, phase of border harmonics k = 1..9
    edge: float
    opacity: float
    palette: np.ndarray  # (K, 3) float32, jittered
    variegation: float
    thresholds: np.ndarray  # (K,) patch thresholds
    colour_grids: np.ndarray  # (K, G, G) smooth noise in lesion coordinates
    texture_grid: np.ndarray  # (24, 24) fine mottle
    shade: float  # + darker centre, - lighter centre
    network: bool
    network_freq: float
    dots: np.ndarray  # (D, 4): u, v, size, colour index
    strokes: list[np.ndarray]  # polylines in lesion coordinates (vessels, fissures)
    lobules: np.ndarray  # (L, 3): u, v, colour index
    skin: np.ndarray  # (3,) skin colour of this patient


def _draw_lesion(rng: np.random.Generator, cls: str) -> _Lesion:
    """Draw one lesion's looks: its class's style, or ~4% of the time a neighbour's."""
    look = cls
    if rng.random() < _BORROW_RATE:
        nb = _NEIGHBOURS[cls]
        look = nb[int(rng.integers(len(nb)))]
    st = _STYLES[look]
    k = len(st.palette)

    def u(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds))

    amps = np.zeros(9, dtype=np.float32)
    amps[:3] = rng.uniform(0.3, 1.0, 3) * u(st.asym) / np.array([1.0, 1.5, 2.0])
    amps[3:] = rng.uniform(0.2, 1.0, 6) * u(st.irregular) / np.sqrt(np.arange(4, 10))
    harmonics = np.stack([amps, rng.uniform(0, 2 * np.pi, 9)], axis=1).astype(np.float32)
    palette = np.array(st.palette, dtype=np.float32)
    palette *= rng.normal(1.0, 0.035, (k, 3)).astype(np.float32) * float(rng.normal(1.0, 0.08))

    n_dots = int(rng.integers(st.dots[0], st.dots[1] + 1))
    if look == "mel":  # irregular globules, mostly near the border
        r = rng.uniform(0.5, 1.05, n_dots)
    else:  # regular: a ring or scattered
        r = rng.uniform(0.2, 0.9, n_dots)
    t = rng.uniform(0, 2 * np.pi, n_dots)
    dot_col = rng.integers(1, 3, n_dots) if look in ("mel", "nv") else np.zeros(n_dots)
    dots = np.stack([r * np.cos(t), r * np.sin(t), rng.uniform(0.02, 0.06, n_dots), dot_col], axis=1)

    strokes: list[np.ndarray] = []
    if st.kind == "vessels":  # arborizing vessels: branching random walks from the middle outwards
        for _ in range(int(rng.integers(3, 7))):
            p = rng.uniform(-0.3, 0.3, 2)
            heading = rng.uniform(0, 2 * np.pi)
            pts = [p.copy()]
            for _ in range(int(rng.integers(5, 10))):
                heading += rng.normal(0, 0.45)
                p = p + 0.12 * np.array([np.cos(heading), np.sin(heading)])
                pts.append(p.copy())
            strokes.append(np.array(pts))
            if len(pts) > 3:  # a side branch
                q, h2 = pts[2].copy(), heading + rng.choice([-1.0, 1.0]) * 0.9
                side = [q.copy()]
                for _ in range(4):
                    q = q + 0.08 * np.array([np.cos(h2), np.sin(h2)])
                    side.append(q.copy())
                strokes.append(np.array(side))
    elif st.kind == "cysts":  # fissures of a seborrhoeic keratosis
        for _ in range(int(rng.integers(1, 5))):
            p, heading = rng.uniform(-0.5, 0.5, 2), rng.uniform(0, 2 * np.pi)
            pts = [p]
            for _ in range(4):
                heading += rng.normal(0, 0.6)
                p = p + 0.1 * np.array([np.cos(heading), np.sin(heading)])
                pts.append(p)
            strokes.append(np.array(pts))

    lobules = np.zeros((0, 3))
    if st.kind == "lobules":
        n_lob = int(rng.integers(3, 9))
        lr, lt = np.sqrt(rng.uniform(0, 0.55, n_lob)), rng.uniform(0, 2 * np.pi, n_lob)
        lobules = np.stack([lr * np.cos(lt), lr * np.sin(lt), rng.integers(0, k, n_lob)], axis=1)

    return _Lesion(
        style=st, radius=u(st.radius), aspect=float(rng.uniform(0.7, 1.0)), angle=float(rng.uniform(0, 2 * np.pi)),
        harmonics=harmonics, edge=u(st.edge), opacity=u(st.opacity), palette=palette,
        variegation=u(st.variegation), thresholds=rng.uniform(0.2, 1.3, k).astype(np.float32),
        colour_grids=rng.standard_normal((k, 7, 7)).astype(np.float32),
        texture_grid=rng.standard_normal((24, 24)).astype(np.float32),
        shade=float(rng.uniform(-0.1, 0.3)), network=bool(rng.random() < st.network),
        network_freq=float(rng.uniform(9, 15)), dots=dots, strokes=strokes, lobules=lobules,
        skin=_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))] * rng.normal(1.0, 0.015, 3).astype(np.float32),
    )


def _render(les: _Lesion, rng: np.random.Generator, size: tuple[int, int], variant: int,
            masks: list[np.ndarray] | None = None) -> Image.Image:
    """Draw one image of a lesion; variant > 0 shifts, rotates, rescales and re-lights it.
    With ``masks``, the lesion's mask (H, W) bool (inside its drawn border) is appended to it."""
    w, h = size
    px = min(w, h) / 150.0  # pixel scale relative to the 200x150 reference
    st = les.style
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # skin background: tone, blotches, grain, sometimes freckles
    skin = les.skin * float(rng.normal(1.0, 0.025)) * rng.normal(1.0, 0.008, 3).astype(np.float32)
    img = np.broadcast_to(skin, (h, w, 3)).copy()
    img *= (1.0 + 0.05 * _smooth_noise(rng, h, w, (4, 5)))[..., None]
    img += 3.5 * rng.standard_normal((h, w, 1)).astype(np.float32)

    # lesion geometry in lesion coordinates (1 = nominal border)
    jitter = variant > 0
    cx = w / 2 + rng.normal(0, 0.06 if jitter else 0.035) * w
    cy = h / 2 + rng.normal(0, 0.06 if jitter else 0.035) * h
    angle = les.angle + (rng.uniform(-0.6, 0.6) if jitter else 0.0)
    radius = les.radius * (min(w, h) / 2) * (rng.uniform(0.93, 1.07) if jitter else 1.0)
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = (dx * ca + dy * sa) / radius
    v = (-dx * sa + dy * ca) / (radius * les.aspect)
    to_lesion = (ca / radius, sa / radius, -(cx * ca + cy * sa) / radius,
                 -sa / (radius * les.aspect), ca / (radius * les.aspect), (cx * sa - cy * ca) / (radius * les.aspect))
    d = np.sqrt(u * u + v * v)
    # border radius 1 + sum_k a_k cos(k theta + phi_k), with cos(k theta + phi) = Re(z^k e^{i phi})
    z = (u + 1j * v).astype(np.complex64) / np.maximum(d, 1e-6)
    zk, border = z, np.ones_like(d)
    for amp, phase in les.harmonics:
        border += amp * (zk * np.complex64(np.exp(1j * phase))).real
        zk = zk * z
    rn = d / np.maximum(border, 0.3)  # < 1 inside the lesion
    alpha = _sigmoid((1.0 - rn) * radius / (les.edge * px)) * les.opacity
    if masks is not None:  # the border: alpha at half the lesion's opacity
        masks.append(rn < 1.0)

    # lesion colour: main colour, patches of the other palette colours, shading, mottle
    pal = les.palette
    col = np.broadcast_to(pal[0], (h, w, 3)).copy()
    for i in range(1, len(pal)):
        n = _sample_grid(les.colour_grids[i], to_lesion, (w, h))
        _blend(col, pal[i], _sigmoid(5.0 * (n - les.thresholds[i])) * les.variegation)
    col *= (1.0 - les.shade * np.clip(1.0 - rn, 0, 1) ** 2)[..., None]
    col *= (1.0 + 0.07 * _sample_grid(les.texture_grid, to_lesion, (w, h), extent=1.2))[..., None]

    if st.kind == "ring":  # dermatofibroma: pale scar-like centre, brown ring fading out
        centre = _sigmoid((0.55 - rn) * 9.0)
        _blend(col, pal[1], centre * 0.85)
    elif st.kind == "lobules":  # vascular: red/purple lagoons split by pale septa
        du = u[None] - les.lobules[:, 0, None, None]
        dv = v[None] - les.lobules[:, 1, None, None]
        dist = np.sqrt(du * du + dv * dv)
        nearest = np.argmin(dist, axis=0)
        d1 = np.min(dist, axis=0)
        d2 = np.partition(dist, 1, axis=0)[1] if len(les.lobules) > 1 else d1 + 1
        lob_col = pal[les.lobules[nearest, 2].astype(np.int64)]
        col = col * 0.35 + lob_col * 0.65 * (1.0 - 0.25 * np.clip(1 - d1 / 0.5, 0, 1))[..., None]
        _blend(col, (225, 175, 185), np.exp(-(((d2 - d1) / 0.045) ** 2)) * 0.5)
    elif st.kind == "scale":  # actinic keratosis: white-yellow scale on red
        scale = _smooth_noise(rng, h, w, (int(30 * px) + 1, int(40 * px) + 1))
        _blend(col, (236, 222, 200), _sigmoid(5.0 * (scale - 1.2)) * 0.6)

    if les.network:  # reticular pigment network, warped
        warp = 0.15 * _sample_grid(les.texture_grid.T, to_lesion, (w, h), extent=1.2)
        f = les.network_freq
        line = np.exp(-np.sin(f * (u + warp)) ** 2 / 0.08) + np.exp(-np.sin(f * (v - warp)) ** 2 / 0.08)
        col *= (1.0 - 0.22 * np.clip(line, 0, 1) * np.clip(1.2 - rn, 0, 1))[..., None]

    a = alpha[..., None]
    img = img * (1 - a) + col * a

    # dots and globules (in lesion coordinates, drawn where they land in this image)
    for du_, dv_, s, ci in les.dots:
        x0 = cx + radius * (du_ * ca - dv_ * les.aspect * sa)
        y0 = cy + radius * (du_ * sa + dv_ * les.aspect * ca)
        sig = max(0.8, s * radius * 0.6)
        r = int(3 * sig) + 1
        xa, xb, ya, yb = max(0, int(x0) - r), min(w, int(x0) + r + 1), max(0, int(y0) - r), min(h, int(y0) + r + 1)
        if xa >= xb or ya >= yb:
            continue
        g = np.exp(-((xx[ya:yb, xa:xb] - x0) ** 2 + (yy[ya:yb, xa:xb] - y0) ** 2) / (2 * sig * sig))
        dot_colour = pal[int(ci)] * 0.6 if st.kind != "cysts" else (
            np.array((245, 240, 225), np.float32) if ci == 0 and s < 0.04 else pal[3] * 0.7)
        _blend(img[ya:yb, xa:xb], dot_colour, g * 0.9)

    # strokes: vessels (red) or fissures (dark), drawn in image pixels
    if les.strokes:
        lines = []
        for pts in les.strokes:
            xs = cx + radius * (pts[:, 0] * ca - pts[:, 1] * les.aspect * sa)
            ys = cy + radius * (pts[:, 0] * sa + pts[:, 1] * les.aspect * ca)
            lines.append(np.stack([xs, ys], axis=1))
        widths = [max(1, int(round(px * (1.5 if i % 2 == 0 else 1.0)))) for i in range(len(lines))]
        mask = _stroke_mask((w, h), lines, widths, blur=0.6 * px)
        colour = (170, 30, 45) if st.kind == "vessels" else tuple(pal[-1] * 0.6)
        _blend(img, colour, mask * 0.85)

    # hair: a few dark curved lines across the field
    if rng.random() < 0.3:
        lines = []
        for _ in range(int(rng.integers(2, 12))):
            p0 = rng.uniform((0, 0), (w, h))
            direction = rng.uniform(0, 2 * np.pi)
            length, bend = rng.uniform(0.3, 1.0) * w, rng.normal(0, 0.4)
            t = np.linspace(0, 1, 12)[:, None]
            heading = direction + bend * t[:, 0]
            steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * length / 12
            lines.append(p0 + np.cumsum(steps, axis=0))
        mask = _stroke_mask((w, h), lines, [max(1, int(px))] * len(lines), blur=0.4)
        _blend(img, (45, 32, 28), mask * 0.8)

    # dermoscope: dark corners of the round field of view, and a slight light fall-off
    rad = np.sqrt((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.5 * math.hypot(w, h))
    if rng.random() < 0.45:
        _blend(img, (25, 18, 22), _sigmoid((rad - rng.uniform(0.82, 0.97)) / 0.03))
    img *= (1.0 - 0.12 * rad**2)[..., None]
    exposure = rng.normal(1.0, 0.04 if jitter else 0.025) * rng.normal(1.0, 0.012, 3)  # light, white balance
    img *= exposure.astype(np.float32)

    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(0.5 * px))


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
        les = _draw_lesion(rng, cls)
        for variant in range(k):
            image_id = "ISIC_%07d" % image_numbers[j]
            j += 1
            drawn: list[np.ndarray] | None = [] if masks else None
            files[image_id] = _jpeg(_render(les, rng, (w, h), variant, drawn))
            if drawn:
                lesion_masks[image_id] = drawn[0]
            rows.append({"lesion_id": "HAM_%07d" % lesion_numbers[li], "image_id": image_id, **meta})

    planted = _plant_defects(rows, files, seed) if defects else {}

    for image_id, data in files.items():
        (out / "images" / f"{image_id}.jpg").write_bytes(data)
    if masks:
        (out / "masks").mkdir(exist_ok=True)
        if "duplicate_image" in planted:  # same bytes, same lesion
            dup = planted["duplicate_image"]
            lesion_masks[dup["image_id"]] = lesion_masks[dup["same_bytes_as"]]
        for image_id, mask in lesion_masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{image_id}.png")
    columns = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
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
    return out
