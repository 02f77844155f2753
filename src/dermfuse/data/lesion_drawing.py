"""Drawing one synthetic lesion: how each class looks, and one image of a lesion.

`draw_lesion(rng, cls)` draws a lesion's parameters once (its class's style, or ~4% of the
time a neighbouring class's, so a classifier cannot be perfect); `render_lesion` turns them
into one dermoscopy-like image on a skin background, shifted, rotated and re-lit for
variants > 0. `dermfuse.data.synth` writes these images into a HAM10000-layout data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["Lesion", "draw_lesion", "render_lesion"]

_BORROW_RATE = 0.04  # share of lesions drawn with a neighbouring class's appearance
_NEIGHBOURS = {"mel": ("nv", "bkl"), "nv": ("mel", "bkl", "df"), "bkl": ("mel", "akiec", "nv"),
               "bcc": ("akiec", "vasc"), "akiec": ("bcc", "bkl"), "df": ("nv", "bkl"), "vasc": ("bcc", "mel")}


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
class Lesion:
    """One lesion's looks, drawn once; every image of it is rendered from these."""

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


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def draw_lesion(rng: np.random.Generator, cls: str) -> Lesion:
    """Draw one lesion's looks: its class's style, or ~4% of the time a neighbour's."""
    look = cls
    if rng.random() < _BORROW_RATE:
        nb = _NEIGHBOURS[cls]
        look = nb[int(rng.integers(len(nb)))]
    st = _STYLES[look]
    k = len(st.palette)

    def u(bounds: tuple[float, float]) -> float:
        return _uniform(rng, bounds)

    harmonics = _draw_harmonics(rng, st)
    palette = np.array(st.palette, dtype=np.float32)
    palette *= rng.normal(1.0, 0.035, (k, 3)).astype(np.float32) * float(rng.normal(1.0, 0.08))
    dots = _draw_dots(rng, st, look)
    strokes = _draw_strokes(rng, st)
    lobules = _draw_lobules(rng, st, k)
    return Lesion(
        style=st, radius=u(st.radius), aspect=float(rng.uniform(0.7, 1.0)), angle=float(rng.uniform(0, 2 * np.pi)),
        harmonics=harmonics, edge=u(st.edge), opacity=u(st.opacity), palette=palette,
        variegation=u(st.variegation), thresholds=rng.uniform(0.2, 1.3, k).astype(np.float32),
        colour_grids=rng.standard_normal((k, 7, 7)).astype(np.float32),
        texture_grid=rng.standard_normal((24, 24)).astype(np.float32),
        shade=float(rng.uniform(-0.1, 0.3)), network=bool(rng.random() < st.network),
        network_freq=float(rng.uniform(9, 15)), dots=dots, strokes=strokes, lobules=lobules,
        skin=_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))] * rng.normal(1.0, 0.015, 3).astype(np.float32),
    )


def _draw_harmonics(rng: np.random.Generator, st: _Style) -> np.ndarray:
    """Border harmonics (9, 2): amplitude, phase; 1-3 make the shape asymmetric, 4-9 ragged."""
    amps = np.zeros(9, dtype=np.float32)
    amps[:3] = rng.uniform(0.3, 1.0, 3) * _uniform(rng, st.asym) / np.array([1.0, 1.5, 2.0])
    amps[3:] = rng.uniform(0.2, 1.0, 6) * _uniform(rng, st.irregular) / np.sqrt(np.arange(4, 10))
    return np.stack([amps, rng.uniform(0, 2 * np.pi, 9)], axis=1).astype(np.float32)


def _draw_dots(rng: np.random.Generator, st: _Style, look: str) -> np.ndarray:
    """Dots / globules (D, 4): u, v, size, colour index, in lesion coordinates."""
    n_dots = int(rng.integers(st.dots[0], st.dots[1] + 1))
    if look == "mel":  # irregular globules, mostly near the border
        r = rng.uniform(0.5, 1.05, n_dots)
    else:  # regular: a ring or scattered
        r = rng.uniform(0.2, 0.9, n_dots)
    t = rng.uniform(0, 2 * np.pi, n_dots)
    dot_col = rng.integers(1, 3, n_dots) if look in ("mel", "nv") else np.zeros(n_dots)
    return np.stack([r * np.cos(t), r * np.sin(t), rng.uniform(0.02, 0.06, n_dots), dot_col], axis=1)


def _draw_strokes(rng: np.random.Generator, st: _Style) -> list[np.ndarray]:
    """Polylines in lesion coordinates: vessels of a BCC, fissures of a keratosis, else none."""
    if st.kind == "vessels":
        return _vessel_strokes(rng)
    if st.kind == "cysts":
        return _fissure_strokes(rng)
    return []


def _vessel_strokes(rng: np.random.Generator) -> list[np.ndarray]:
    """Arborizing vessels: branching random walks from the middle outwards."""
    strokes: list[np.ndarray] = []
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
    return strokes


def _fissure_strokes(rng: np.random.Generator) -> list[np.ndarray]:
    """Fissures of a seborrhoeic keratosis: short random walks."""
    strokes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 5))):
        p, heading = rng.uniform(-0.5, 0.5, 2), rng.uniform(0, 2 * np.pi)
        pts = [p]
        for _ in range(4):
            heading += rng.normal(0, 0.6)
            p = p + 0.1 * np.array([np.cos(heading), np.sin(heading)])
            pts.append(p)
        strokes.append(np.array(pts))
    return strokes


def _draw_lobules(rng: np.random.Generator, st: _Style, k: int) -> np.ndarray:
    """Vascular lagoons (L, 3): u, v, palette index; none (0, 3) for other kinds."""
    if st.kind != "lobules":
        return np.zeros((0, 3))
    n_lob = int(rng.integers(3, 9))
    lr, lt = np.sqrt(rng.uniform(0, 0.55, n_lob)), rng.uniform(0, 2 * np.pi, n_lob)
    return np.stack([lr * np.cos(lt), lr * np.sin(lt), rng.integers(0, k, n_lob)], axis=1)


# --- rendering one image of a lesion -----------------------------------------------------------


@dataclass
class _Frame:
    """Where the lesion lands in one image: centre, radius, rotation, and per pixel (H, W) its
    lesion coordinates u, v and normalised radius rn (< 1 inside the drawn border)."""

    cx: float
    cy: float
    radius: float
    ca: float  # cos, sin of the rotation
    sa: float
    aspect: float
    u: np.ndarray
    v: np.ndarray
    rn: np.ndarray
    to_lesion: tuple[float, ...]  # pixel -> lesion affine map, see `_sample_grid`

    def to_image(self, pu, pv):
        """Lesion coordinates (scalars or arrays) -> image pixel x, y."""
        return (self.cx + self.radius * (pu * self.ca - pv * self.aspect * self.sa),
                self.cy + self.radius * (pu * self.sa + pv * self.aspect * self.ca))


def render_lesion(les: Lesion, rng: np.random.Generator, size: tuple[int, int], variant: int,
            masks: list[np.ndarray] | None = None) -> Image.Image:
    """Draw one image of a lesion; variant > 0 shifts, rotates, rescales and re-lights it.
    With ``masks``, the lesion's mask (H, W) bool (inside its drawn border) is appended to it."""
    w, h = size
    px = min(w, h) / 150.0  # pixel scale relative to the 200x150 reference
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _skin_background(les, rng, w, h)
    jitter = variant > 0
    fr = _place_lesion(les, rng, xx, yy, jitter)
    alpha = _sigmoid((1.0 - fr.rn) * fr.radius / (les.edge * px)) * les.opacity
    if masks is not None:  # the border: alpha at half the lesion's opacity
        masks.append(fr.rn < 1.0)
    col = _lesion_colour(les, rng, fr, px)
    a = alpha[..., None]
    img = img * (1 - a) + col * a
    _draw_dots_on(img, les, fr, xx, yy)
    _draw_strokes_on(img, les, fr, px)
    _draw_hair(img, rng, px)
    _dermoscope(img, rng, xx, yy, jitter)
    out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(0.5 * px))


def _skin_background(les: Lesion, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Skin (H, W, 3) float32: the patient's tone, blotches and grain."""
    skin = les.skin * float(rng.normal(1.0, 0.025)) * rng.normal(1.0, 0.008, 3).astype(np.float32)
    img = np.broadcast_to(skin, (h, w, 3)).copy()
    img *= (1.0 + 0.05 * _smooth_noise(rng, h, w, (4, 5)))[..., None]
    img += 3.5 * rng.standard_normal((h, w, 1)).astype(np.float32)
    return img


def _place_lesion(les: Lesion, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray,
                  jitter: bool) -> _Frame:
    """The lesion's frame in this image (1 = nominal border); ``jitter`` moves it more."""
    h, w = xx.shape
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
    return _Frame(cx=cx, cy=cy, radius=radius, ca=ca, sa=sa, aspect=les.aspect, u=u, v=v, rn=rn,
                  to_lesion=to_lesion)


def _lesion_colour(les: Lesion, rng: np.random.Generator, fr: _Frame, px: float) -> np.ndarray:
    """The lesion's colour (H, W, 3): main colour, patches of the other palette colours,
    shading, mottle, its class's structure and maybe a pigment network."""
    h, w = fr.rn.shape
    pal = les.palette
    col = np.broadcast_to(pal[0], (h, w, 3)).copy()
    for i in range(1, len(pal)):
        n = _sample_grid(les.colour_grids[i], fr.to_lesion, (w, h))
        _blend(col, pal[i], _sigmoid(5.0 * (n - les.thresholds[i])) * les.variegation)
    col *= (1.0 - les.shade * np.clip(1.0 - fr.rn, 0, 1) ** 2)[..., None]
    col *= (1.0 + 0.07 * _sample_grid(les.texture_grid, fr.to_lesion, (w, h), extent=1.2))[..., None]
    col = _add_structure(col, les, rng, fr, px)
    if les.network:  # reticular pigment network, warped
        warp = 0.15 * _sample_grid(les.texture_grid.T, fr.to_lesion, (w, h), extent=1.2)
        f = les.network_freq
        line = np.exp(-np.sin(f * (fr.u + warp)) ** 2 / 0.08) + np.exp(-np.sin(f * (fr.v - warp)) ** 2 / 0.08)
        col *= (1.0 - 0.22 * np.clip(line, 0, 1) * np.clip(1.2 - fr.rn, 0, 1))[..., None]
    return col


def _add_structure(col: np.ndarray, les: Lesion, rng: np.random.Generator, fr: _Frame, px: float) -> np.ndarray:
    """``col`` with the structure of the lesion's kind: ring, lobules or scale (others: as is)."""
    kind, pal, rn = les.style.kind, les.palette, fr.rn
    h, w = rn.shape
    if kind == "ring":  # dermatofibroma: pale scar-like centre, brown ring fading out
        centre = _sigmoid((0.55 - rn) * 9.0)
        _blend(col, pal[1], centre * 0.85)
    elif kind == "lobules":  # vascular: red/purple lagoons split by pale septa
        du = fr.u[None] - les.lobules[:, 0, None, None]
        dv = fr.v[None] - les.lobules[:, 1, None, None]
        dist = np.sqrt(du * du + dv * dv)
        nearest = np.argmin(dist, axis=0)
        d1 = np.min(dist, axis=0)
        d2 = np.partition(dist, 1, axis=0)[1] if len(les.lobules) > 1 else d1 + 1
        lob_col = pal[les.lobules[nearest, 2].astype(np.int64)]
        col = col * 0.35 + lob_col * 0.65 * (1.0 - 0.25 * np.clip(1 - d1 / 0.5, 0, 1))[..., None]
        _blend(col, (225, 175, 185), np.exp(-(((d2 - d1) / 0.045) ** 2)) * 0.5)
    elif kind == "scale":  # actinic keratosis: white-yellow scale on red
        scale = _smooth_noise(rng, h, w, (int(30 * px) + 1, int(40 * px) + 1))
        _blend(col, (236, 222, 200), _sigmoid(5.0 * (scale - 1.2)) * 0.6)
    return col


def _draw_dots_on(img: np.ndarray, les: Lesion, fr: _Frame, xx: np.ndarray, yy: np.ndarray) -> None:
    """Dots and globules (in lesion coordinates), drawn in place where they land in this image."""
    h, w = xx.shape
    pal, kind = les.palette, les.style.kind
    for du_, dv_, s, ci in les.dots:
        x0, y0 = fr.to_image(du_, dv_)
        sig = max(0.8, s * fr.radius * 0.6)
        r = int(3 * sig) + 1
        xa, xb, ya, yb = max(0, int(x0) - r), min(w, int(x0) + r + 1), max(0, int(y0) - r), min(h, int(y0) + r + 1)
        if xa >= xb or ya >= yb:
            continue
        g = np.exp(-((xx[ya:yb, xa:xb] - x0) ** 2 + (yy[ya:yb, xa:xb] - y0) ** 2) / (2 * sig * sig))
        dot_colour = pal[int(ci)] * 0.6 if kind != "cysts" else (
            np.array((245, 240, 225), np.float32) if ci == 0 and s < 0.04 else pal[3] * 0.7)
        _blend(img[ya:yb, xa:xb], dot_colour, g * 0.9)


def _draw_strokes_on(img: np.ndarray, les: Lesion, fr: _Frame, px: float) -> None:
    """Strokes, in place: vessels (red) or fissures (dark), drawn in image pixels."""
    if not les.strokes:
        return
    h, w = img.shape[:2]
    lines = []
    for pts in les.strokes:
        xs, ys = fr.to_image(pts[:, 0], pts[:, 1])
        lines.append(np.stack([xs, ys], axis=1))
    widths = [max(1, int(round(px * (1.5 if i % 2 == 0 else 1.0)))) for i in range(len(lines))]
    mask = _stroke_mask((w, h), lines, widths, blur=0.6 * px)
    colour = (170, 30, 45) if les.style.kind == "vessels" else tuple(les.palette[-1] * 0.6)
    _blend(img, colour, mask * 0.85)


def _draw_hair(img: np.ndarray, rng: np.random.Generator, px: float) -> None:
    """Hair, in place, 30% of the time: a few dark curved lines across the field."""
    if rng.random() >= 0.3:
        return
    h, w = img.shape[:2]
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


def _dermoscope(img: np.ndarray, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, jitter: bool) -> None:
    """In place: dark corners of the round field of view, a slight light fall-off, exposure
    and white balance."""
    h, w = xx.shape
    rad = np.sqrt((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.5 * math.hypot(w, h))
    if rng.random() < 0.45:
        _blend(img, (25, 18, 22), _sigmoid((rad - rng.uniform(0.82, 0.97)) / 0.03))
    img *= (1.0 - 0.12 * rad**2)[..., None]
    exposure = rng.normal(1.0, 0.04 if jitter else 0.025) * rng.normal(1.0, 0.012, 3)  # light, white balance
    img *= exposure.astype(np.float32)
