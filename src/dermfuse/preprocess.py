"""The paper's augmentation recipe on torchvision.transforms.v2, and the eval preprocessing.

Pure pixel functions (`adjust_brightness`, `adjust_contrast`, `transpose`, `gaussian_blur`)
do the work; thin `v2.Transform` classes sample their parameters (the only place with
randomness, drawn from torch's global generator, so `torch.manual_seed` makes a run
repeatable) and call them. Every training transform takes and returns a uint8 tensor
`(3, H, W)`.

`to_input` is THE preprocessing that training, evaluation, Grad-CAM, predict and serve
call: uint8 images -> float `(B, 3, H, W)` in [0, 1] (the paper's Normalize, /255). Models
hold their own mean/std and normalise inside `forward`.

`PAPER_AUGMENTATION` lists, for each transform the paper names, what we use and with
which parameters (see also `docs/architecture.md`).

`BatchAugmentation` is the same recipe for a whole batch on the batch's device (a GPU
trains several times faster when its CPU workers no longer augment image by image): the
same steps in the same order with the same probabilities and ranges, each step equal to
its per-image transform up to the float rounding of the resampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .image_size import size_hw

__all__ = [
    "PAPER_AUGMENTATION",
    "AugmentationStep",
    "BatchAugmentation",
    "GaussianBlur",
    "RandomBrightness",
    "RandomContrast",
    "Rotate",
    "Transpose",
    "adjust_brightness",
    "adjust_contrast",
    "gaussian_blur",
    "plot_augmentations",
    "recipe",
    "to_input",
    "train_augmentation",
    "transpose",
    "tta_views",
]


# --- pure pixel functions ---------------------------------------------------------------


def _finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Round and clip float results back to the input's dtype and range."""
    if like.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.clamp_(0.0, 1.0).to(like.dtype)


def adjust_brightness(img: torch.Tensor, beta: float) -> torch.Tensor:
    """Paper's RandomBrightness: I' = I + beta, with I the intensity in [0, 1].

    img: uint8 (..., H, W) in 0..255 (then beta is scaled by 255, i.e. I' = I + 255*beta,
    rounded and clipped to 0..255) or float in [0, 1] (clipped to [0, 1]). Same dtype out.
    This is also what albumentations' RandomBrightness (brightness_by_max) computes.
    """
    max_value = 255.0 if img.dtype == torch.uint8 else 1.0
    return _finish(img.to(torch.float32) + float(beta) * max_value, img)


def adjust_contrast(img: torch.Tensor, alpha: float) -> torch.Tensor:
    """Paper's RandomContrast: I' = alpha * (I - mu) + mu, mu the image's mean intensity.

    img: uint8 (..., C, H, W) 0..255 or float in [0, 1]; mu is the mean over all pixels
    and channels of each image (the last three axes). Rounded and clipped to the input's
    range; same dtype out.
    """
    x = img.to(torch.float32)
    mu = x.mean(dim=(-3, -2, -1), keepdim=True)
    return _finish(float(alpha) * (x - mu) + mu, img)


def transpose(img: torch.Tensor) -> torch.Tensor:
    """Swap the H and W axes: (..., H, W) -> (..., W, H); I'(y, x) = I(x, y)."""
    return img.transpose(-2, -1).contiguous()


def gaussian_blur(img: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur with an odd kernel; sigma from the kernel as OpenCV does for sigma=0.

    sigma = 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8 (albumentations' GaussianBlur default).
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    return F.gaussian_blur(img, kernel_size=[kernel_size, kernel_size], sigma=[sigma, sigma])


# --- thin transforms: sample parameters, call a pixel function ----------------------------


class _PixelTransform(v2.Transform):
    """Applies `_apply(img, **params)` with probability p to tensor images only."""

    _transformed_types = (torch.Tensor,)

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = p

    def _sample(self) -> dict[str, Any]:
        return {}

    def _apply(self, img: torch.Tensor, **params: Any) -> torch.Tensor:
        raise NotImplementedError

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(1).item() >= self.p:
            return {"apply": False}
        return {"apply": True, **self._sample()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"]:
            return inpt
        kwargs = {k: v for k, v in params.items() if k != "apply"}
        out = self._apply(inpt.as_subclass(torch.Tensor), **kwargs)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi).item())


class Transpose(_PixelTransform):
    """Swap H and W with probability p, for a square image. A non-square image (the native
    4:3 aspect ratio, ``data.image_size: [h, w]``) is left as it is: its symmetries are the
    flips alone, and a transposed (3, W, H) image would be squashed back to (3, H, W). The
    draw is made either way, so the other steps' draws do not depend on the shape."""

    def _apply(self, img: torch.Tensor) -> torch.Tensor:
        return transpose(img) if img.shape[-1] == img.shape[-2] else img


class RandomBrightness(_PixelTransform):
    """I' = I + beta, beta ~ U(brightness_range) (default (-0.2, 0.2)), with probability p."""

    def __init__(self, brightness_range: tuple[float, float] = (-0.2, 0.2), p: float = 0.5) -> None:
        super().__init__(p)
        self.brightness_range = tuple(brightness_range)

    def _sample(self) -> dict[str, Any]:
        return {"beta": _uniform(*self.brightness_range)}

    def _apply(self, img: torch.Tensor, beta: float) -> torch.Tensor:
        return adjust_brightness(img, beta)


class RandomContrast(_PixelTransform):
    """I' = alpha (I - mu) + mu, alpha ~ U(contrast_range) (default (0.8, 1.2)), with probability p."""

    def __init__(self, contrast_range: tuple[float, float] = (0.8, 1.2), p: float = 0.5) -> None:
        super().__init__(p)
        self.contrast_range = tuple(contrast_range)

    def _sample(self) -> dict[str, Any]:
        return {"alpha": _uniform(*self.contrast_range)}

    def _apply(self, img: torch.Tensor, alpha: float) -> torch.Tensor:
        return adjust_contrast(img, alpha)


class GaussianBlur(_PixelTransform):
    """Gaussian blur with a kernel drawn from the odd sizes in kernel_range (default 3 or 5)."""

    def __init__(self, kernel_range: tuple[int, int] = (3, 5), p: float = 0.25) -> None:
        super().__init__(p)
        self.kernel_range = tuple(kernel_range)
        self._sizes = [k for k in range(self.kernel_range[0], self.kernel_range[1] + 1) if k % 2 == 1]
        if not self._sizes:
            raise ValueError(f"kernel_range {kernel_range!r} holds no odd kernel size")

    def _sample(self) -> dict[str, Any]:
        return {"kernel_size": self._sizes[int(torch.randint(len(self._sizes), (1,)).item())]}

    def _apply(self, img: torch.Tensor, kernel_size: int) -> torch.Tensor:
        return gaussian_blur(img, kernel_size)


class Rotate(_PixelTransform):
    """Rotate by angle ~ U(angle_range) degrees (default ±90, counter-clockwise positive),
    bilinear, same canvas size, corners filled with `fill` (0 = black), with probability p."""

    def __init__(self, angle_range: tuple[float, float] = (-90.0, 90.0), p: float = 0.5, fill: int = 0) -> None:
        super().__init__(p)
        self.angle_range = tuple(angle_range)
        self.fill = fill

    def _sample(self) -> dict[str, Any]:
        return {"angle": _uniform(*self.angle_range)}

    def _apply(self, img: torch.Tensor, angle: float) -> torch.Tensor:
        return F.rotate(img, angle, interpolation=v2.InterpolationMode.BILINEAR, fill=self.fill)


# --- the recipe ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentationStep:
    """One row of the paper's recipe: its name and parameters, and what implements it.

    ``params`` are the keyword arguments of the transform that implements the row (interval
    parameters as ``(lo, hi)`` tuples). ``identity`` names the params that are magnitudes
    and, for each, the value that means "no change" (angle 0, scale 1): `scaled` moves them
    towards it for an augmentation strength below 1 and away from it above."""

    paper: str  # the paper's (albumentations) name
    ours: str  # what dermfuse uses
    params: dict[str, Any] = field(default_factory=dict)
    p: float = 1.0
    note: str = ""
    identity: dict[str, float] = field(default_factory=dict)  # magnitude param -> its "no change" value

    def scaled(self, strength: float = 1.0) -> dict[str, Any]:
        """``params`` with every magnitude scaled by ``strength`` around its identity value
        (strength 1: ``params`` unchanged; 0: no change to the image)."""
        s = float(strength)
        out = dict(self.params)
        for key, centre in self.identity.items():
            value = self.params[key]
            if isinstance(value, tuple):
                out[key] = tuple(centre + s * (v - centre) if centre else s * v for v in value)
            else:
                out[key] = centre + s * (value - centre) if centre else s * value
        return out


PAPER_AUGMENTATION: tuple[AugmentationStep, ...] = (
    AugmentationStep("Transpose", "dermfuse.preprocess.Transpose", {}, 0.5,
                     "swaps H and W; a non-square image changes shape (H, W) -> (W, H)"),
    AugmentationStep("VerticalFlip", "v2.RandomVerticalFlip", {}, 0.5),
    AugmentationStep("HorizontalFlip", "v2.RandomHorizontalFlip", {}, 0.5),
    AugmentationStep("Rotate", "dermfuse.preprocess.Rotate", {"angle_range": (-90.0, 90.0), "fill": 0}, 0.5,
                     "albumentations' default limit ±90°; border constant 0 (albumentations defaults to reflect)",
                     identity={"angle_range": 0.0}),
    AugmentationStep("RandomBrightness", "dermfuse.preprocess.RandomBrightness",
                     {"brightness_range": (-0.2, 0.2)}, 0.5, "I' = I + beta, I in [0, 1] (uint8: + 255*beta)",
                     identity={"brightness_range": 0.0}),
    AugmentationStep("RandomContrast", "dermfuse.preprocess.RandomContrast",
                     {"contrast_range": (0.8, 1.2)}, 0.5,
                     "I' = alpha (I - mu) + mu as the paper writes (albumentations scales around 0)",
                     identity={"contrast_range": 1.0}),
    AugmentationStep("GaussianBlur", "dermfuse.preprocess.GaussianBlur", {"kernel_range": (3, 5)}, 0.25,
                     "blur_limit=5: kernel 3 or 5, sigma from the kernel size"),
    AugmentationStep("ShiftScaleRotate", "v2.RandomApply([v2.RandomAffine])",
                     {"degrees": (-15.0, 15.0), "translate": (0.1, 0.1), "scale": (0.9, 1.1), "fill": 0}, 0.85,
                     "shift ±10% of the size, scale 0.9..1.1, rotate ±15°, border constant 0",
                     identity={"degrees": 0.0, "translate": 0.0, "scale": 1.0}),
    AugmentationStep("Normalize", "dermfuse.preprocess.to_input", {"max_pixel_value": 255.0}, 1.0,
                     "/255 to [0, 1], applied to every image at train and eval time, not at random"),
)
"""The paper's augmentation, transform by transform (Section 3.2.3), as dermfuse implements
it: the one table `train_augmentation` and `BatchAugmentation` are built from."""


def recipe(strength: float = 1.0) -> dict[str, AugmentationStep]:
    """`PAPER_AUGMENTATION` by paper name, magnitudes scaled by ``strength`` (see
    `AugmentationStep.scaled`), in the paper's order."""
    s = _check_strength(strength)
    return {step.paper: replace(step, params=step.scaled(s)) for step in PAPER_AUGMENTATION}


def _check_strength(strength: float) -> float:
    s = float(strength)
    if not 0.0 <= s <= 5.0:  # above 10, scale 1 - 0.1 s would turn negative
        raise ValueError(f"augmentation strength must be in [0, 5] (1 = the paper's recipe), got {strength!r}")
    return s


_BILINEAR = v2.InterpolationMode.BILINEAR
_BUILDERS: dict[str, Any] = {  # paper name -> (params, p) -> the per-image transform of that row
    "Transpose": lambda params, p: Transpose(p=p, **params),
    "VerticalFlip": lambda params, p: v2.RandomVerticalFlip(p=p, **params),
    "HorizontalFlip": lambda params, p: v2.RandomHorizontalFlip(p=p, **params),
    "Rotate": lambda params, p: Rotate(p=p, **params),
    "RandomBrightness": lambda params, p: RandomBrightness(p=p, **params),
    "RandomContrast": lambda params, p: RandomContrast(p=p, **params),
    "GaussianBlur": lambda params, p: GaussianBlur(p=p, **params),
    "ShiftScaleRotate": lambda params, p: v2.RandomApply([v2.RandomAffine(interpolation=_BILINEAR, **params)], p=p),
    "Normalize": None,  # not random: `to_input` does it for training and evaluation alike
}


def train_augmentation(size: int | tuple[int, int] | None = None, strength: float = 1.0) -> v2.Compose:
    """The paper's training augmentation: uint8 tensor (3, H, W) -> uint8 tensor (3, h, w).

    One transform per row of `PAPER_AUGMENTATION`, in its order (Transpose, VerticalFlip,
    HorizontalFlip, Rotate, RandomBrightness, RandomContrast, GaussianBlur,
    ShiftScaleRotate), with the row's parameters and probability. ``strength`` s >= 0 scales
    every magnitude around "no change" (rotate ±90s°, brightness ±0.2s, contrast 1 ± 0.2s,
    ShiftScaleRotate shift ±0.1s, scale 1 ± 0.1s, rotate ±15s°); probabilities, flips, the
    transpose and the blur stay as they are. s = 1 is the paper's recipe exactly (same
    parameters, same random draws); ``dermfuse tune`` searches s.

    Without `size` the output has the input's shape (Transpose leaves a non-square image as
    it is); with `size` (int or (h, w)) a final bilinear resize makes every output that
    size. Normalize (/255) is not here: `to_input` does it for training and
    evaluation alike.
    """
    steps: list[v2.Transform] = [_BUILDERS[step.paper](step.params, step.p)
                                 for step in recipe(strength).values() if _BUILDERS[step.paper] is not None]
    if size is not None:
        steps.append(v2.Resize(list(size_hw(size)), interpolation=_BILINEAR, antialias=True))
    return v2.Compose(steps)


# --- the recipe on a batch, on any device -----------------------------------------------


def _inverse_affine(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) output-to-input maps in pixel units around the image centre, as
    torchvision's `_get_inverse_affine_matrix(center=0, angle, (tx, ty), scale, shear=0)`."""
    rot = torch.deg2rad(angle)
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    m = torch.stack([cos, sin, -(cos * tx + sin * ty), -sin, cos, sin * tx - cos * ty], dim=1)
    return m.view(-1, 2, 3)


def _warp(images: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Bilinear warp of uint8 (B, 3, H, W) by (B, 2, 3) inverse maps, outside filled with 0,
    rounded back to uint8: torchvision's tensor affine/rotate with fill=0, for a batch."""
    b, _, h, w = images.shape
    x = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, device=images.device)
    y = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, device=images.device)
    base = torch.stack([x.expand(h, w), y[:, None].expand(h, w), torch.ones(h, w, device=images.device)], dim=-1)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=images.device)
    grid = (base.view(1, h * w, 3) @ inverse.to(images.device, torch.float32).transpose(1, 2)) / scale  # (B, HW, 2)
    ones = torch.ones(b, 1, h, w, device=images.device)
    out = torch.nn.functional.grid_sample(torch.cat([images.float(), ones], dim=1), grid.view(b, h, w, 2),
                                          mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out[:, :3] * out[:, 3:]).round_().clamp_(0, 255).to(torch.uint8)  # * coverage: fill 0 as torchvision


class BatchAugmentation:
    """`train_augmentation` for a batch: uint8 (B, 3, H, W) on any device -> uint8 (B, 3, h, w).

    Every image draws its own parameters, from ``generator`` (a CPU `torch.Generator`, so a
    seed gives the same parameters on CPU and GPU; pixels agree up to float rounding in the
    warps and the blur): Transpose, VerticalFlip,
    HorizontalFlip, Rotate, RandomBrightness, RandomContrast, GaussianBlur and
    ShiftScaleRotate with the probabilities and ranges of `PAPER_AUGMENTATION`, in that
    order, then a resize to ``size`` if given. Each step gives what its per-image transform
    gives for the same parameters (the two warps up to float rounding in the resampling).
    A non-square batch skips the transpose (as `Transpose` does) and shifts by a fraction
    of its width across and of its height down (RandomAffine's ``translate``).
    """

    STEPS = ("Transpose", "VerticalFlip", "HorizontalFlip", "Rotate", "RandomBrightness", "RandomContrast",
             "GaussianBlur", "ShiftScaleRotate")  # the order `apply` runs them in

    def __init__(self, size: int | tuple[int, int] | None = None, strength: float = 1.0) -> None:
        table = tuple(name for name, build in ((s.paper, _BUILDERS[s.paper]) for s in PAPER_AUGMENTATION) if build)
        if table != self.STEPS:
            raise ValueError(f"BatchAugmentation runs {self.STEPS}, but PAPER_AUGMENTATION lists {table}")
        self.size = None if size is None else size_hw(size)  # (h, w)
        self.strength = _check_strength(strength)  # as in `train_augmentation`

    def sample(self, n: int, generator: torch.Generator | None = None, width: int = 128,
               height: int | None = None) -> dict[str, torch.Tensor]:
        """Per-image parameters for ``n`` images ``width`` x ``height`` pixels (height: the
        width, a square, if not given); CPU tensors of length n."""
        def u(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(n).uniform_(lo, hi, generator=generator)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) < p

        r = recipe(self.strength)  # the table, magnitudes scaled
        rotate, bright, contrast = (r[k].params for k in ("Rotate", "RandomBrightness", "RandomContrast"))
        blur, affine = r["GaussianBlur"].params, r["ShiftScaleRotate"].params
        kernels = torch.tensor([k for k in range(blur["kernel_range"][0], blur["kernel_range"][1] + 1) if k % 2])
        max_dx, max_dy = (t * side for t, side in zip(affine["translate"], (width, height or width)))  # RandomAffine's
        return {
            "transpose": coin(r["Transpose"].p), "vflip": coin(r["VerticalFlip"].p),
            "hflip": coin(r["HorizontalFlip"].p),
            "rotate": coin(r["Rotate"].p), "rotate_angle": u(*rotate["angle_range"]),
            "brightness": coin(r["RandomBrightness"].p), "beta": u(*bright["brightness_range"]),
            "contrast": coin(r["RandomContrast"].p), "alpha": u(*contrast["contrast_range"]),
            "blur": coin(r["GaussianBlur"].p),
            "blur_kernel": kernels[torch.randint(len(kernels), (n,), generator=generator)],
            "affine": coin(r["ShiftScaleRotate"].p), "affine_angle": u(*affine["degrees"]),
            "tx": u(-max_dx, max_dx).round(), "ty": u(-max_dy, max_dy).round(),
            "scale": u(*affine["scale"]),
        }

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The recipe with the given per-image ``params`` (see `sample`)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"BatchAugmentation: expected uint8 (B, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        p = {k: v.to(images.device) for k, v in params.items()}

        def on(key: str) -> torch.Tensor:
            return p[key].view(-1, 1, 1, 1)

        square = images.shape[-1] == images.shape[-2]  # a 4:3 batch has no transpose (see Transpose)
        x = torch.where(on("transpose"), images.transpose(-2, -1), images) if square else images
        x = torch.where(on("vflip"), x.flip(-2), x)
        x = torch.where(on("hflip"), x.flip(-1), x)
        x = x.clone()
        if (sel := p["rotate"].nonzero().flatten()).numel():  # F.rotate(angle) = inverse map at -angle
            zero = torch.zeros(len(sel), device=x.device)
            x[sel] = _warp(x[sel], _inverse_affine(-p["rotate_angle"][sel], zero, zero, zero + 1))
        y = x.float()
        y = torch.where(on("brightness"), (y + 255.0 * on("beta")).round().clamp(0, 255), y)
        mu = y.mean(dim=(1, 2, 3), keepdim=True)
        y = torch.where(on("contrast"), (on("alpha") * (y - mu) + mu).round().clamp(0, 255), y)
        x = y.to(torch.uint8)
        for k in p["blur_kernel"][p["blur"]].unique().tolist():
            if (sel := (p["blur"] & (p["blur_kernel"] == k)).nonzero().flatten()).numel():
                x[sel] = gaussian_blur(x[sel], k)
        if (sel := p["affine"].nonzero().flatten()).numel():
            x[sel] = _warp(x[sel], _inverse_affine(p["affine_angle"][sel], p["tx"][sel], p["ty"][sel],
                                                   p["scale"][sel]))
        if self.size is not None and self.size != tuple(x.shape[-2:]):
            x = F.resize(x, list(self.size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample(len(images), generator, width=images.shape[-1],
                                              height=images.shape[-2]))


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Eval preprocessing (the paper's Normalize): uint8 images -> float32 (B, 3, H, W) in [0, 1].

    images: numpy uint8 (B, H, W, 3) (e.g. the image cache) or torch uint8 (B, 3, H, W)
    (e.g. a batch of augmented images; stays on its device). Anything else is a ValueError,
    so nothing gets divided by 255 twice.
    """
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"to_input expects a uint8 tensor (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        return images.to(torch.float32).div_(255.0)
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise ValueError(f"to_input expects a uint8 array (B, H, W, 3), got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(arr.astype(np.float32))  # copy: the cache's memmap stays read-only
    return x.permute(0, 3, 1, 2).div_(255.0).contiguous()


def tta_views(x: torch.Tensor, n: int = 0) -> list[torch.Tensor]:
    """Test-time views of a batch (B, 3, H, W): identity, h-flip, v-flip, hv-flip and, for
    square images, the transpose; ``n`` > 0: the first n of them (``train.tta_views``).
    Training, evaluation and every inference path use these (``dermfuse.inference.predictor``)."""
    views = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]
    if x.shape[-1] == x.shape[-2]:
        views.append(x.transpose(-2, -1))
    if n > len(views):
        raise ValueError(f"{n} test-time views asked of a {x.shape[-2]}x{x.shape[-1]} input, which has {len(views)}")
    return views[:n] if n > 0 else views


def plot_augmentations(images: np.ndarray, n_variants: int = 5, seed: int = 0):
    """Figure of the training augmentation: one row per image, the original then n_variants.

    images: uint8 (N, H, W, 3). Uses its own torch RNG state (seed), leaving the global
    one as it was. Returns a matplotlib Figure titled "Augmented samples".
    """
    from matplotlib.figure import Figure

    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise ValueError(f"plot_augmentations expects uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")
    n, cols = len(arr), 1 + int(n_variants)
    aug = train_augmentation()
    fig = Figure(figsize=(1.6 * cols, 1.6 * n + 0.4), constrained_layout=True)
    axes = fig.subplots(n, cols, squeeze=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for r in range(n):
            img = torch.from_numpy(np.ascontiguousarray(arr[r])).permute(2, 0, 1)  # (3, H, W)
            for c in range(cols):
                out = img if c == 0 else aug(img)
                ax = axes[r, c]
                ax.imshow(out.permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
    fig.suptitle("Augmented samples")
    return fig
