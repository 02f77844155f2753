"""The augmentation strength knob that `dermfuse tune` searches: strength 1 is the paper's
recipe bit for bit (same parameters, same random draws), other strengths scale its
magnitudes only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from dermfuse.preprocess import BatchAugmentation, GaussianBlur, RandomBrightness, RandomContrast, Rotate, Transpose, train_augmentation


def _recipe_before_the_knob() -> v2.Compose:
    """The recipe as it was written before `strength` existed (literal parameters)."""
    return v2.Compose([
        Transpose(p=0.5),
        v2.RandomVerticalFlip(p=0.5),
        v2.RandomHorizontalFlip(p=0.5),
        Rotate(angle_range=(-90.0, 90.0), p=0.5, fill=0),
        RandomBrightness(brightness_range=(-0.2, 0.2), p=0.5),
        RandomContrast(contrast_range=(0.8, 1.2), p=0.5),
        GaussianBlur(kernel_range=(3, 5), p=0.25),
        v2.RandomApply([v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1),
                                        interpolation=v2.InterpolationMode.BILINEAR, fill=0)], p=0.85),
    ])


def _images(n: int = 12, size: int = 24) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.integers(0, 256, (3, size, size), dtype=np.uint8)) for _ in range(n)]


def _run(aug, images, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [aug(img) for img in images]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_strength_one_reproduces_the_recipe_exactly(seed):
    images = _images()
    old = _run(_recipe_before_the_knob(), images, seed)
    for new in (_run(train_augmentation(strength=1.0), images, seed), _run(train_augmentation(), images, seed)):
        assert all(torch.equal(a, b) for a, b in zip(old, new))


def test_batch_strength_one_draws_the_recipes_parameters():
    def old_sample(n, g, width):  # BatchAugmentation.sample before the knob, literal ranges
        def u(lo, hi):
            return torch.empty(n).uniform_(lo, hi, generator=g)

        def coin(p):
            return torch.rand(n, generator=g) < p
        s = 0.1 * width
        return {"transpose": coin(0.5), "vflip": coin(0.5), "hflip": coin(0.5), "rotate": coin(0.5),
                "rotate_angle": u(-90.0, 90.0), "brightness": coin(0.5), "beta": u(-0.2, 0.2),
                "contrast": coin(0.5), "alpha": u(0.8, 1.2), "blur": coin(0.25),
                "blur_kernel": 3 + 2 * torch.randint(2, (n,), generator=g), "affine": coin(0.85),
                "affine_angle": u(-15.0, 15.0), "tx": u(-s, s).round(), "ty": u(-s, s).round(),
                "scale": u(0.9, 1.1)}

    new = BatchAugmentation(strength=1.0).sample(64, torch.Generator().manual_seed(3), width=32)
    old = old_sample(64, torch.Generator().manual_seed(3), 32)
    assert new.keys() == old.keys()
    assert all(torch.equal(new[k], old[k]) for k in old)


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.5])
def test_strength_scales_magnitudes_not_probabilities(strength):
    p = BatchAugmentation(strength=strength).sample(4000, torch.Generator().manual_seed(0), width=100)
    ref = BatchAugmentation(strength=1.0).sample(4000, torch.Generator().manual_seed(0), width=100)
    for coin in ("transpose", "vflip", "hflip", "rotate", "brightness", "contrast", "blur", "affine"):
        assert torch.equal(p[coin], ref[coin])  # the same draws decide what is applied
    assert p["rotate_angle"].abs().max() <= 90.0 * strength
    assert p["beta"].abs().max() <= 0.2 * strength + 1e-7
    assert (p["alpha"] - 1).abs().max() <= 0.2 * strength + 1e-6
    assert (p["scale"] - 1).abs().max() <= 0.1 * strength + 1e-6
    assert p["tx"].abs().max() <= round(0.1 * strength * 100)
    if strength > 0:
        assert p["rotate_angle"].abs().max() > 0.9 * 90.0 * strength  # the range is used, not shrunk
    aug = train_augmentation(strength=strength)
    rotate, bright = aug.transforms[3], aug.transforms[4]
    assert rotate.angle_range == (-90.0 * strength, 90.0 * strength) and rotate.p == 0.5
    assert bright.brightness_range == (-0.2 * strength, 0.2 * strength) and bright.p == 0.5


def test_strength_zero_leaves_only_flips_transpose_and_blur_on_a_flat_image():
    flat = torch.full((3, 20, 20), 120, dtype=torch.uint8)
    torch.manual_seed(0)
    aug = train_augmentation(strength=0.0)
    # rotation and affine by 0 degrees, shift 0, scale 1, brightness +0, contrast x1: nothing moves
    for _ in range(20):
        assert torch.equal(aug(flat), flat)


@pytest.mark.parametrize("bad", [-0.1, 6.0])
def test_strength_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match="strength"):
        train_augmentation(strength=bad)
    with pytest.raises(ValueError, match="strength"):
        BatchAugmentation(strength=bad)
