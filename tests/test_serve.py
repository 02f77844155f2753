"""The HTTP API: answers, validation (every bad input is a 4xx that names the problem),
upload limit, concurrency and the static page. FastAPI's test client, CPU, a 64 px bundle."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _bundles import jpeg_bytes, lesion_image, make_bundle, png_bytes
from dermfuse.inference.bundle import load_bundle
from dermfuse.inference.predict import predict_one
from dermfuse.serve.app import DISCLAIMER, MAX_UPLOAD_BYTES, create_app


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("bundle") / "b"))


@pytest.fixture(scope="module")
def client(bundle):
    with TestClient(create_app(bundle)) as c:
        yield c


def _post(client, image=b"", filename="lesion.jpg", age="45", sex="male", site="back", **kw):
    # without an image, another file part keeps the body multipart (else httpx sends urlencoded: 415)
    files = {"image" if image is not None else "other": (filename, b"x" if image is None else image, "application/octet-stream")}
    data = {k: v for k, v in {"age": age, "sex": sex, "site": site}.items() if v is not None}
    return client.post("/predict", files=files, data=data, **kw)


def _png_header(width: int, height: int, data: bytes = b"\0" * 100) -> bytes:
    """An 8-bit greyscale PNG of the given size with (possibly too little) pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data, 9))
            + chunk(b"IEND", b""))


# --- answers -----------------------------------------------------------------------------


def test_health(client, bundle):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["model_id"] == bundle.model_id


def test_model_lists_classes_sites_sexes_metrics_and_card(client, bundle):
    body = client.get("/model").json()
    assert body["classes"] == bundle.classes
    assert body["sites"] == bundle.encoder.sites and "back" in body["sites"]
    assert body["sexes"] == bundle.encoder.sexes
    assert body["metrics"]["balanced_accuracy"] == 0.5
    assert "intended_use" in body["model_card"]
    assert body["class_names"]["mel"] == "melanoma"


def test_openapi_spec_documents_predict_form(client):
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/model"} <= set(spec["paths"])
    form = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form


def test_predict_matches_predict_one(client, bundle):
    image = jpeg_bytes(lesion_image(1))
    r = _post(client, image, age="61", sex="female", site="face")
    assert r.status_code == 200, r.text
    body = r.json()
    want = predict_one(bundle, image, "61", "female", "face")
    assert set(body["probabilities"]) == set(bundle.classes)
    np.testing.assert_allclose([body["probabilities"][c] for c in bundle.classes],
                               [want.probabilities[c] for c in bundle.classes], atol=1e-5)
    assert body["top_class"] == want.top_class
    assert body["model_id"] == bundle.model_id
    assert body["disclaimer"] == DISCLAIMER and "not a diagnosis" in DISCLAIMER
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))))
    assert heat.shape == (bundle.image_size, bundle.image_size, 3)
    np.testing.assert_allclose(heat.astype(int), want.overlay.astype(int), atol=1)


def test_blank_metadata_means_unknown(client, bundle):
    image = png_bytes(lesion_image(2))
    r = _post(client, image, filename="x.png", age="", sex="", site="")
    assert r.status_code == 200, r.text
    want = predict_one(bundle, image, None, None, None)
    assert r.json()["top_class"] == want.top_class


def test_image_only_bundle(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "cnn", model="cnn"))
    with TestClient(create_app(bundle)) as c:
        ok = _post(c, jpeg_bytes(lesion_image(3)))
        bad = _post(c, jpeg_bytes(lesion_image(3)), site="moon")
    assert ok.status_code == 200 and ok.json()["heatmap_png"]
    assert bad.status_code == 422 and "site" in bad.json()["detail"]


# --- validation: every bad input is a 4xx naming the problem ----------------------------

_GOOD = jpeg_bytes(lesion_image(0))
_BAD_CASES = {
    "non-image": (dict(image=b"this is a text file, not a picture\n", filename="notes.txt"),
                  r"notes\.txt.*not a readable image"),
    "corrupt image": (dict(image=_GOOD[: len(_GOOD) // 2]), r"lesion\.jpg.*truncated"),
    "empty file": (dict(image=b""), r"lesion\.jpg' is empty \(0 bytes\)"),
    "decompression bomb": (dict(image=_png_header(7000, 7000, b"\0" * 7001 * 7000)),
                           r"decompression bomb"),
    "huge declared size": (dict(image=_png_header(60000, 60000)), r"decompression bomb"),
    "age not a number": (dict(age="forty"), r"age 'forty' is not a number"),
    "age inf": (dict(age="inf"), r"age 'inf' is not a finite number"),
    "age too high": (dict(age="200"), r"age '200' is outside 0\.\.120"),
    "age negative": (dict(age="-3"), r"age '-3' is outside 0\.\.120"),
    "age very long": (dict(age="4" * 5000), r"age '4+…' \(5000 characters\) is not a number"),
    "unknown sex": (dict(sex="robot"), r"sex 'robot' is not accepted; expected one of female, male"),
    "unknown site": (dict(site="moon"), r"site 'moon' is not accepted; expected one of back, face"),
    "missing image": (dict(image=None), r"form field 'image' is missing"),
}


@pytest.mark.parametrize("case", list(_BAD_CASES))
def test_bad_input_is_422_with_message(client, case):
    overrides, pattern = _BAD_CASES[case]
    kwargs = {"image": _GOOD, **overrides}
    r = _post(client, **kwargs)
    assert r.status_code == 422, (case, r.status_code, r.text)
    assert re.search(pattern, r.json()["detail"]), r.json()["detail"]


def test_mangled_images_are_never_a_server_error(client):
    rng = np.random.default_rng(0)
    bases = [_GOOD, png_bytes(lesion_image(1))]
    for i in range(24):
        data = bytearray(bases[i % 2])
        for pos in rng.integers(0, 300, size=rng.integers(1, 12)):
            data[pos] = rng.integers(0, 256)
        if i % 3 == 0:
            data = data[: rng.integers(1, len(data))]
        r = _post(client, bytes(data))
        assert r.status_code in (200, 422), r.text
        assert r.status_code == 200 or r.json()["detail"].startswith("image file 'lesion.jpg'")


def test_malformed_multipart_is_400(client):
    r = client.post("/predict", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "multipart" in r.json()["detail"].lower()


def test_image_sent_as_text_field_is_422(client):
    r = client.post("/predict", data={"image": "hello", "age": "40"}, files={"other": ("x", b"x")})
    assert r.status_code == 422 and "'image' must be a file" in r.json()["detail"]


def test_json_body_is_415_naming_multipart(client):
    r = client.post("/predict", json={"age": 40})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


@pytest.mark.parametrize("extra", [1, 1024 * 1024], ids=["image part", "content-length"])
def test_upload_over_20mb_is_413(client, extra):
    r = _post(client, b"\xff" * (MAX_UPLOAD_BYTES + extra), filename="big.jpg")
    assert r.status_code == 413
    assert "too large" in r.json()["detail"] and "20 MB" in r.json()["detail"]


def test_streamed_upload_over_20mb_is_413_without_content_length(client):
    boundary = "dermfuseboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    sent = []

    def body():  # 1 MB chunks; the server must stop reading soon after 20 MB
        yield head
        for _ in range(40):
            sent.append(1)
            yield b"\xff" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/predict", content=body(),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


# --- concurrency -------------------------------------------------------------------------


def test_concurrent_requests_are_all_answered_correctly(bundle):
    app = create_app(bundle)
    inputs = [(jpeg_bytes(lesion_image(10 + i)), str(20 + 7 * i), ["male", "female"][i % 2],
               ["back", "face", "trunk", "lower extremity"][i % 4]) for i in range(8)]

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*[
                c.post("/predict", files={"image": ("x.jpg", img, "image/jpeg")},
                       data={"age": age, "sex": sex, "site": site})
                for img, age, sex, site in inputs])

    try:
        responses = asyncio.run(run())
    finally:
        app.state.batcher.stop()
    for (img, age, sex, site), r in zip(inputs, responses):
        assert r.status_code == 200, r.text
        want = predict_one(bundle, img, age, sex, site, explain=False)
        got = r.json()["probabilities"]
        np.testing.assert_allclose([got[c] for c in bundle.classes],
                                   [want.probabilities[c] for c in bundle.classes], atol=1e-5)
    assert app.state.batcher.items == 8


def test_batcher_groups_waiting_requests(bundle):
    app = create_app(bundle)
    batcher = app.state.batcher
    img = np.zeros((bundle.image_size, bundle.image_size, 3), np.uint8)
    meta = bundle.encoder.encode_one(40, "male", "back")
    try:
        futures = [batcher.submit(img, meta) for _ in range(6)]
        results = [f.result(timeout=60) for f in futures]
    finally:
        batcher.stop()
    assert len(results) == 6 and batcher.items == 6
    assert batcher.batches < 6 and batcher.largest_batch > 1


def test_a_failing_item_does_not_fail_its_batch(bundle, monkeypatch):
    import dermfuse.serve.batcher as serve_batcher

    real = serve_batcher.infer_batch

    def infer(b, images, meta, *rest):  # a batch holding the marked image fails, like a model bug would
        if (images[:, 0, 0, 0] == 255).any():
            raise RuntimeError("boom")
        return real(b, images, meta, *rest)

    monkeypatch.setattr(serve_batcher, "infer_batch", infer)
    batcher = create_app(bundle).state.batcher
    meta = bundle.encoder.encode_one(40, "male", "back")
    imgs = [np.full((bundle.image_size, bundle.image_size, 3), v, np.uint8) for v in (10, 255, 20, 30)]
    try:
        futures = [batcher.submit(img, meta) for img in imgs]
        with pytest.raises(RuntimeError, match="boom"):
            futures[1].result(timeout=60)
        assert all(f.result(timeout=60) is not None for i, f in enumerate(futures) if i != 1)
    finally:
        batcher.stop()


def test_predict_answers_status_and_explains_a_chosen_class(client, bundle):
    image = jpeg_bytes(lesion_image(4))
    r = client.post("/predict", files={"image": ("a.jpg", image, "image/jpeg")},
                    data={"age": "50", "sex": "male", "site": "back", "explain": "mel"})
    assert r.status_code == 200, r.text
    body = r.json()
    want = predict_one(bundle, image, "50", "male", "back", explain_class="mel")
    assert body["explained_class"] == "mel" == want.explained_class
    assert body["status"] == "ok" and body["probabilities_reliable"] is True  # no trust part: as before
    assert body["operating_point"] == "argmax" and body["message"]
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))))
    np.testing.assert_allclose(heat.astype(int), want.overlay.astype(int), atol=1)
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image_png"]))))
    assert seen.shape == (bundle.image_size, bundle.image_size, 3)
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(body["map_png"])))).shape == seen.shape


@pytest.mark.parametrize("field,value,needle", [("explain", "melanomaa", "not one of this model's classes"),
                                                ("operating_point", "melanoma", "offers")])
def test_bad_explain_class_or_operating_point_is_422(client, field, value, needle):
    r = client.post("/predict", files={"image": ("a.jpg", jpeg_bytes(lesion_image(1)), "image/jpeg")},
                    data={"age": "50", field: value})
    assert r.status_code == 422 and needle in r.json()["detail"]


def test_model_says_whether_it_is_synthetic_and_carries_the_card(client, bundle):
    body = client.get("/model").json()
    assert body["synthetic"] is False and body["released"] is False
    assert body["card"]["model_id"] == bundle.model_id and "intended_use" in body["card"]
    assert body["operating_points"] == ["argmax"] and body["trust"] is None


# --- the page ----------------------------------------------------------------------------


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith(("/", "data:")) for ref in refs), refs
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200
        assert not re.search(r"https?://", r.text), f"{asset} names an internet address"
