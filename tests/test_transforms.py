"""The paper's augmentation recipe and the eval preprocessing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from torchvision.transforms.v2 import functional as F

from dermfuse.preprocess import PAPER_AUGMENTATION, BatchAugmentation, GaussianBlur, RandomBrightness, Rotate, Transpose, adjust_brightness, adjust_contrast, gaussian_blur, plot_augmentations, to_input, train_augmentation


def _image(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def test_augmentation_keeps_shape_and_dtype():
    aug = train_augmentation()
    torch.manual_seed(0)
    for _ in range(20):
        out = aug(_image())
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


def test_non_square_images_keep_their_shape_unless_a_size_is_given():
    aug = train_augmentation()
    torch.manual_seed(0)
    shapes = {tuple(aug(_image(24, 40)).shape) for _ in range(30)}
    assert shapes == {(3, 24, 40)}  # no transpose: a rectangle's symmetries are the flips
    sized = train_augmentation(size=32)
    assert {tuple(sized(_image(24, 40)).shape) for _ in range(10)} == {(3, 32, 32)}


def test_brightness_is_the_papers_formula():
    img = torch.tensor([0, 100, 250], dtype=torch.uint8).view(1, 1, 3)
    # I' = I + beta on intensities in [0, 1]: +0.2 is +51 on 0..255, clipped
    assert adjust_brightness(img, 0.2).flatten().tolist() == [51, 151, 255]
    assert adjust_brightness(img, -0.2).flatten().tolist() == [0, 49, 199]
    assert adjust_brightness(img, 0.2).dtype == torch.uint8
    as_float = torch.tensor([0.1, 0.5, 0.95])
    torch.testing.assert_close(adjust_brightness(as_float, 0.1), torch.tensor([0.2, 0.6, 1.0]))


def test_contrast_is_the_papers_formula():
    img = torch.tensor([[[0, 100]], [[50, 150]], [[100, 200]]], dtype=torch.uint8)  # (3, 1, 2), mean 100
    # I' = alpha (I - mu) + mu with mu = 100, alpha = 1.5; clipped to 0..255
    assert adjust_contrast(img, 1.5).flatten().tolist() == [0, 100, 25, 175, 100, 250]
    assert torch.equal(adjust_contrast(img, 1.0), img)
    assert adjust_contrast(img, 0.0).unique().tolist() == [100]
    assert adjust_contrast(img, 0.8).dtype == torch.uint8


def test_transpose_swaps_the_axes_of_a_square_and_leaves_a_rectangle():
    img = _image(6, 6)
    out = Transpose(p=1.0)(img)
    assert torch.equal(out, img.permute(0, 2, 1)) and not torch.equal(out, img)
    assert torch.equal(Transpose(p=0.0)(img), img)
    wide = _image(4, 6)
    assert torch.equal(Transpose(p=1.0)(wide), wide)


def test_random_brightness_adds_one_offset_within_the_limit():
    img = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    torch.manual_seed(1)
    for _ in range(10):
        diff = RandomBrightness(p=1.0)(img).to(torch.int16) - 128
        assert diff.unique().numel() == 1 and abs(diff[0, 0, 0].item()) <= 51


def test_blur_and_rotate_keep_a_flat_image_flat():
    flat = torch.full((3, 16, 16), 90, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(flat, 5), flat)
    torch.manual_seed(0)
    assert torch.equal(GaussianBlur(p=1.0)(flat), flat)
    rotated = Rotate(angle_range=(45.0, 45.0), p=1.0)(flat)
    assert rotated[:, 0, 0].tolist() == [0, 0, 0] and rotated[:, 8, 8].tolist() == [90, 90, 90]


def test_augmentation_is_deterministic_under_manual_seed():
    aug, img = train_augmentation(), _image()
    torch.manual_seed(123)
    first = [aug(img) for _ in range(5)]
    torch.manual_seed(123)
    second = [aug(img) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert any(not torch.equal(a, img) for a in first)


# --- the recipe against its table --------------------------------------------------------

# Section 3.2.3 of the paper, in its own (albumentations) terms: probability and limits.
PAPER_SETTINGS = {
    "Transpose": dict(p=0.5), "VerticalFlip": dict(p=0.5), "HorizontalFlip": dict(p=0.5),
    "Rotate": dict(p=0.5),  # no limit given: albumentations' default, 90
    "RandomBrightness": dict(p=0.5, limit=0.2), "RandomContrast": dict(p=0.5, limit=0.2),
    "GaussianBlur": dict(p=0.25, blur_limit=5),
    "ShiftScaleRotate": dict(p=0.85, shift_limit=0.1, scale_limit=0.1, rotate_limit=15, border_mode=0),
    "Normalize": dict(p=1.0),
}


def test_table_holds_the_papers_settings():
    table = {step.paper: step for step in PAPER_AUGMENTATION}
    assert list(table) == list(PAPER_SETTINGS)  # the paper's order
    for name, paper in PAPER_SETTINGS.items():
        assert table[name].p == paper["p"], name
    params = {name: step.params for name, step in table.items()}
    assert params["Rotate"]["angle_range"] == (-90.0, 90.0)
    b, c = PAPER_SETTINGS["RandomBrightness"]["limit"], PAPER_SETTINGS["RandomContrast"]["limit"]
    assert params["RandomBrightness"]["brightness_range"] == (-b, b)
    assert params["RandomContrast"]["contrast_range"] == pytest.approx((1 - c, 1 + c))
    assert params["GaussianBlur"]["kernel_range"] == (3, PAPER_SETTINGS["GaussianBlur"]["blur_limit"])
    ssr, affine = PAPER_SETTINGS["ShiftScaleRotate"], params["ShiftScaleRotate"]
    assert affine["translate"] == (ssr["shift_limit"],) * 2 and affine["fill"] == ssr["border_mode"]
    assert affine["scale"] == pytest.approx((1 - ssr["scale_limit"], 1 + ssr["scale_limit"]))
    assert affine["degrees"] == (-ssr["rotate_limit"], ssr["rotate_limit"])


# Each measurement applies one step of `train_augmentation` to a probe image and reads back
# (applied?, the parameters the output shows), without looking inside the transform.
S = 64
_YY, _XX = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")


def _centroids(img: torch.Tensor) -> np.ndarray:
    """(3, 2) intensity centroid (x, y) of each channel, relative to the image centre."""
    w = img.to(torch.float64)
    total = w.sum(dim=(1, 2))
    return torch.stack([(w * _XX).sum(dim=(1, 2)) / total, (w * _YY).sum(dim=(1, 2)) / total], 1).numpy() - (S - 1) / 2


def _blobs() -> torch.Tensor:
    """One bright 3x3 blob per channel, at three non-collinear places around the centre."""
    img = torch.zeros(3, S, S, dtype=torch.uint8)
    for ch, (dx, dy) in enumerate(((12, 0), (0, 12), (-12, -12))):
        x, y = S // 2 + dx, S // 2 + dy
        img[ch, y - 1:y + 2, x - 1:x + 2] = 255
    return img


def _affine_of(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """Angle (degrees, counter-clockwise on screen), scale and shift (fractions of the size)
    of the similarity that maps the blobs' centroids in ``before`` to those in ``after``."""
    src, dst = _centroids(before), _centroids(after)
    design = np.hstack([src, np.ones((3, 1))])  # dst = design @ M, M (3, 2)
    m = np.linalg.solve(design, dst)
    a = m[:2].T  # (2, 2) in image coordinates (y down)
    return {"angle": float(np.degrees(np.arctan2(-a[1, 0], a[0, 0]))), "scale": float(np.sqrt(abs(np.linalg.det(a)))),
            "tx": float(m[2, 0] / S), "ty": float(m[2, 1] / S)}


def _measure(name: str, step, rng: torch.Generator) -> tuple[bool, dict[str, float]]:
    if name in ("Transpose", "VerticalFlip", "HorizontalFlip"):
        img = torch.randint(0, 256, (3, S, S), dtype=torch.uint8, generator=rng)
        out = step(img)
        want = {"Transpose": img.transpose(-2, -1), "VerticalFlip": img.flip(-2), "HorizontalFlip": img.flip(-1)}[name]
        assert torch.equal(out, img) or torch.equal(out, want), name  # nothing else happens
        return torch.equal(out, want), {}
    if name == "RandomBrightness":
        img = torch.full((3, S, S), 128, dtype=torch.uint8)
        out = step(img).to(torch.float64)
        assert out.unique().numel() == 1
        return not torch.equal(out, img.double()), {"beta": (out[0, 0, 0].item() - 128) / 255}
    if name == "RandomContrast":
        img = torch.full((3, S, S), 28, dtype=torch.uint8)
        img[:, :, S // 2:] = 228  # mean 128
        out = step(img).to(torch.float64)
        return not torch.equal(out, img.double()), {"alpha": (out[0, 0, -1] - out[0, 0, 0]).item() / 200}
    if name == "GaussianBlur":
        img = torch.zeros(3, S, S, dtype=torch.uint8)
        img[:, S // 2, S // 2] = 255
        out = step(img)
        return not torch.equal(out, img), {"kernel": int((out[0, S // 2] > 0).sum())}
    img = _blobs()  # Rotate, ShiftScaleRotate
    out = step(img)
    return not torch.equal(out, img), _affine_of(img, out)


def _spans(values: list[float], lo: float, hi: float, tol: float) -> bool:
    """All values in [lo, hi] (up to the measurement's tolerance), and both ends reached."""
    v = np.asarray(values)
    margin = 0.1 * (hi - lo)
    return lo - tol <= v.min() < lo + margin and hi - margin < v.max() <= hi + tol


@pytest.mark.parametrize("row", range(len(PAPER_AUGMENTATION) - 1), ids=[s.paper for s in PAPER_AUGMENTATION[:-1]])
def test_each_step_does_what_its_table_row_says(row):
    """Step ``row`` of `train_augmentation`, seen from outside: it happens with the row's
    probability, and the parameters its outputs show stay inside the row's ranges and use them."""
    step_row = PAPER_AUGMENTATION[row]
    name, params = step_row.paper, step_row.params
    step = train_augmentation().transforms[row]
    torch.manual_seed(row)
    rng = torch.Generator().manual_seed(100 + row)
    measured = [_measure(name, step, rng) for _ in range(1000)]
    applied = [m for on, m in measured if on]
    assert abs(len(applied) / len(measured) - step_row.p) < 0.06, (name, len(applied))
    seen = {k: [m[k] for m in applied] for k in (applied[0] if applied else {})}
    if name == "Rotate":
        assert _spans(seen["angle"], *params["angle_range"], tol=1.0)
        assert np.allclose(seen["scale"], 1, atol=0.01) and np.allclose(seen["tx"] + seen["ty"], 0, atol=0.01)
    elif name == "RandomBrightness":
        assert _spans(seen["beta"], *params["brightness_range"], tol=0.5 / 255)
    elif name == "RandomContrast":
        assert _spans(seen["alpha"], *params["contrast_range"], tol=1 / 200)
    elif name == "GaussianBlur":
        lo, hi = params["kernel_range"]
        assert set(seen["kernel"]) == {k for k in range(lo, hi + 1) if k % 2}
    elif name == "ShiftScaleRotate":
        assert _spans(seen["angle"], *params["degrees"], tol=1.0)
        assert _spans(seen["scale"], *params["scale"], tol=0.01)
        # torchvision draws whole-pixel shifts, round(U(-0.1 S, 0.1 S)): ends within half a pixel
        for key, limit in (("tx", params["translate"][0]), ("ty", params["translate"][1])):
            assert _spans(seen[key], -limit, limit, tol=0.6 / S), key
    else:
        assert name in ("Transpose", "VerticalFlip", "HorizontalFlip") and not params


def test_the_batch_recipe_runs_the_tables_steps_in_its_order():
    assert BatchAugmentation.STEPS == tuple(s.paper for s in PAPER_AUGMENTATION if s.paper != "Normalize")


def test_to_input_from_numpy_and_torch():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    arr.setflags(write=False)  # like the cache's read-only memmap
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = to_input(arr)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.is_contiguous()
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x[1, 2, 4, 6].item() == pytest.approx(arr[1, 4, 6, 2] / 255.0)
    t = torch.from_numpy(arr.copy()).permute(0, 3, 1, 2)
    torch.testing.assert_close(to_input(t), x)
    with pytest.raises(ValueError, match="uint8"):
        to_input(x)
    with pytest.raises(ValueError, match="uint8"):
        to_input(arr[0])


def test_plot_augmentations_figure():
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    state = torch.get_rng_state()
    fig = plot_augmentations(images, n_variants=4, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(fig.axes) == 3 * 5
    assert fig._suptitle.get_text() == "Augmented samples"
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), images[0])


# --- the recipe per batch ------------------------------------------------------------------


def _per_image_reference(img: torch.Tensor, p: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    """The per-image transforms of `train_augmentation`, in its order, with image i's
    parameters: the oracle for BatchAugmentation."""
    bilinear = v2.InterpolationMode.BILINEAR
    if p["transpose"][i] and img.shape[-1] == img.shape[-2]:  # Transpose leaves a rectangle as it is
        img = img.transpose(-2, -1)
    if p["vflip"][i]:
        img = F.vertical_flip(img)
    if p["hflip"][i]:
        img = F.horizontal_flip(img)
    if p["rotate"][i]:
        img = Rotate(p=1.0)._apply(img, angle=float(p["rotate_angle"][i]))
    if p["brightness"][i]:
        img = adjust_brightness(img, float(p["beta"][i]))
    if p["contrast"][i]:
        img = adjust_contrast(img, float(p["alpha"][i]))
    if p["blur"][i]:
        img = gaussian_blur(img, int(p["blur_kernel"][i]))
    if p["affine"][i]:
        img = F.affine(img, angle=float(p["affine_angle"][i]), translate=[int(p["tx"][i]), int(p["ty"][i])],
                       scale=float(p["scale"][i]), shear=[0.0, 0.0], interpolation=bilinear, fill=0)
    return img


@pytest.mark.parametrize("h, w", [(40, 40), (30, 40)])  # square, and the native 4:3
def test_batch_augmentation_equals_the_per_image_transforms_step_by_step(h, w):
    aug = BatchAugmentation()
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 3, h, w), dtype=torch.uint8, generator=g)
    images[:, :, 10:h - 10, 10:30] //= 3  # a darker "lesion", so the warps move structure
    params = aug.sample(64, g, width=w, height=h)
    for key in ("transpose", "vflip", "hflip", "rotate", "brightness", "contrast", "blur", "affine"):
        params[key][:4] = False  # the first four images: no step applies
    assert all(params[k][4:].any() and not params[k][4:].all() for k in ("transpose", "rotate", "blur", "affine"))
    out = aug.apply(images, params)
    ref = torch.stack([_per_image_reference(images[i], params, i) for i in range(64)])
    assert out.dtype == torch.uint8 and out.shape == images.shape
    diff = (out.int() - ref.int()).abs()
    # bilinear warps round at .5 boundaries in float: rare off-by-one pixels, never more
    assert diff.max().item() <= 2 and (diff > 0).float().mean().item() < 0.005
    assert torch.equal(out[:4], images[:4]) and not torch.equal(out[4:], images[4:])


def test_batch_augmentation_draws_the_papers_probabilities_and_ranges():
    p = BatchAugmentation().sample(20000, torch.Generator().manual_seed(0), width=128)
    by_name = {step.paper: step.p for step in PAPER_AUGMENTATION}
    for key, paper in (("transpose", "Transpose"), ("vflip", "VerticalFlip"), ("hflip", "HorizontalFlip"),
                       ("rotate", "Rotate"), ("brightness", "RandomBrightness"), ("contrast", "RandomContrast"),
                       ("blur", "GaussianBlur"), ("affine", "ShiftScaleRotate")):
        assert abs(p[key].float().mean().item() - by_name[paper]) < 0.015, key
    table = {step.paper: step.params for step in PAPER_AUGMENTATION}
    affine = table["ShiftScaleRotate"]
    shift = round(affine["translate"][0] * 128)  # whole pixels, round(U(-12.8, 12.8)) as RandomAffine
    for key, (lo, hi) in (("rotate_angle", table["Rotate"]["angle_range"]),
                          ("beta", table["RandomBrightness"]["brightness_range"]),
                          ("alpha", table["RandomContrast"]["contrast_range"]), ("affine_angle", affine["degrees"]),
                          ("tx", (-shift, shift)), ("ty", (-shift, shift)), ("scale", affine["scale"])):
        assert lo <= p[key].min().item() < lo + 0.1 * (hi - lo) and hi - 0.1 * (hi - lo) < p[key].max().item() <= hi, key
    lo, hi = table["GaussianBlur"]["kernel_range"]
    assert set(p["blur_kernel"].tolist()) == {k for k in range(lo, hi + 1) if k % 2}
    assert torch.equal(p["tx"], p["tx"].round())
    assert abs((p["blur_kernel"] == 3).float().mean().item() - 0.5) < 0.015


def test_batch_augmentation_repeats_under_a_seed_and_checks_its_input():
    aug = BatchAugmentation(size=24)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = aug(images, torch.Generator().manual_seed(5))
    assert a.shape == (8, 3, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, aug(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, aug(images, torch.Generator().manual_seed(6)))
    assert aug(images[:, :, :, :30]).shape == (8, 3, 24, 24)  # a non-square batch, resized to the size asked
    with pytest.raises(ValueError, match=r"expected uint8 \(B, 3, H, W\)"):
        aug(images.float())
    with pytest.raises(ValueError, match=r"expected uint8 \(B, 3, H, W\)"):
        aug(images[:, :1])
