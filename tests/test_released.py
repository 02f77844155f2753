"""The released model: flat grey and skimage's astronaut come back out of distribution with no
class; a 1x1 image is refused. Skips cleanly while the released bundle is not in the package."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dermfuse.released import RELEASED_BUNDLE, has_released

pytestmark = pytest.mark.skipif(not has_released(), reason=f"no released bundle at {RELEASED_BUNDLE} yet")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def released():
    from dermfuse.inference.bundle import load_bundle
    from dermfuse.released import resolve_bundle

    return load_bundle(resolve_bundle(None))


def test_released_bundle_is_small_and_has_trust(released):
    size = sum(p.stat().st_size for p in RELEASED_BUNDLE.iterdir())
    assert size <= 25 * 1024 * 1024
    assert released.trust is not None and released.trust.ood is not None
    assert (RELEASED_BUNDLE.parent / "LICENSE").read_text().count("CC BY-NC 4.0") >= 1


def test_flat_grey_is_out_of_distribution(released):
    from dermfuse.inference.predict import predict_one

    p = predict_one(released, _png(np.full((450, 600, 3), 128, np.uint8)), None, None, None, explain=False)
    assert p.status == "out_of_distribution" and p.top_class is None


def test_astronaut_is_out_of_distribution(released):
    data = pytest.importorskip("skimage.data", reason="scikit-image not installed (test extra)")
    from dermfuse.inference.predict import predict_one

    p = predict_one(released, _png(data.astronaut()), 40, "male", "back", explain=False)
    assert p.status == "out_of_distribution" and p.top_class is None


def test_one_pixel_image_is_refused(released):
    from dermfuse.errors import InputError
    from dermfuse.inference.predict import predict_one

    with pytest.raises(InputError):
        predict_one(released, _png(np.zeros((1, 1, 3), np.uint8)), None, None, None)
