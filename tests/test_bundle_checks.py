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


def test_seen_images_keep_ids_with_spaces_and_refuse_an_edited_list(tmp_path):
    from dermfuse.errors import BundleError
    from dermfuse.inference.bundle import load_bundle, read_bundle_info, update_bundle_info, write_seen_images

    path = make_bundle(tmp_path / "b", image_size=32)
    assert load_bundle(path).seen_images() is None  # a bundle without a list
    entry = write_seen_images(path, ["lesion 01", "ISIC_1", "ISIC_1"])  # a folder's file stem may hold a space
    update_bundle_info(path, training_data={**read_bundle_info(path)["training_data"], "seen_images": entry})
    assert entry["count"] == 2 and load_bundle(path).seen_images() == {"lesion 01", "ISIC_1"}
    (path / "seen_images.txt").write_text("ISIC_1\n")
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(path).seen_images()
