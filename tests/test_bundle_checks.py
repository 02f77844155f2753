"""A bundle is checked against its weights before use: classes vs. the network's output,
metadata width, input size. A mismatch is a BundleError naming both sides."""

from __future__ import annotations

import json

import pytest

from _bundles import make_bundle
from dermfuse import HAM10000_CLASSES
from dermfuse.inference.bundle import load_bundle
from dermfuse.errors import BundleError


def _edit(path, change):
    meta = path / "bundle.json"
    info = json.loads(meta.read_text())
    change(info)
    meta.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("classes", [list(HAM10000_CLASSES) + ["scc"], list(HAM10000_CLASSES)[:-1]])
def test_a_class_list_longer_or_shorter_than_the_output_is_refused(tmp_path, classes):
    """The defect: one way gave probabilities under the wrong names, the other a traceback."""
    path = _edit(make_bundle(tmp_path / "b"), lambda i: i.update(classes=classes))
    with pytest.raises(BundleError, match=rf"lists {len(classes)} classes .* outputs \(7,\) logits"):
        load_bundle(path)


def test_metadata_width_disagreeing_with_the_encoder_is_refused(tmp_path):
    def drop_site(info):
        info["encoder"]["sites"] = ["back", "unknown"]  # fewer features than the weights take
    path = _edit(make_bundle(tmp_path / "b"), drop_site)
    with pytest.raises(BundleError, match=r"model takes 11 metadata features but the encoder gives 7"):
        load_bundle(path)


def test_input_size_disagreeing_with_the_architecture_is_refused(tmp_path):
    path = _edit(make_bundle(tmp_path / "b", image_size=64),
                 lambda i: i["preprocessing"].update(image_size=96))
    with pytest.raises(BundleError, match=r"image_size is 96 but the model was built for input_size 64"):
        load_bundle(path)


def test_a_consistent_bundle_still_loads(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b", model="cnn"))
    assert b.classes == list(HAM10000_CLASSES)
