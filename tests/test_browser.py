"""End to end in a real headless Chromium: the page loads from a live uvicorn server on
127.0.0.1, takes an image (picked, and dragged), shows a validation error, then the
probability bars, the heatmap beside the original and the disclaimer.

Needs Debian's chromium (/usr/bin/chromium) and the playwright Python package (never
``playwright install``). Set ``DERMFUSE_SCREENSHOT=docs/img/web_page.png`` to also write
the screenshot there (it always goes to the test's tmp folder).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from _bundles import jpeg_bytes, lesion_image, make_bundle, png_bytes

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} not found (apt-get install -y chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")


@contextlib.contextmanager
def _open_page(width: int, height: int, **page_options):
    """A page of a headless Chromium at that viewport;
    the browser is closed afterwards, whether the test passed or not."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, **page_options)
            yield page
        finally:
            browser.close()


def _wait_ready(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def _serve(app):
    """Run ``app`` with uvicorn on a free 127.0.0.1 port; yields its URL, stops it after."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    from dermfuse.serve.app import create_app

    # A low temperature spreads the random model's near-uniform scores, so the bars differ.
    app = create_app(make_bundle(tmp_path_factory.mktemp("bundle") / "b", temperature=0.04))
    yield from _serve(app)


def _shrink_png(path: Path) -> None:
    """Re-save a screenshot as a 256-colour PNG (a few tens of kB)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def test_page_uploads_and_shows_result_and_heatmap(server_url, tmp_path):
    requests: list[str] = []
    problems: list[str] = []
    image = tmp_path / "lesion.jpg"
    image.write_bytes(jpeg_bytes(lesion_image(7, size=(300, 225))))

    with _open_page(940, 900) as page:
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        _wait_ready(page, server_url + "/")
        assert page.locator("#disclaimer").inner_text().startswith("Research use only")
        sites = page.locator("#site option").all_inner_texts()
        assert "back" in sites and "unknown" in sites

        # drag and drop puts a file in the form
        page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
                document.getElementById('drop').dispatchEvent(
                    new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
            base64.b64encode(png_bytes(lesion_image(8))).decode(),
        )
        assert "dropped.png" in page.locator("#drop-text").inner_text()

        # pick a file; a bad age shows the server's message, not a result
        page.set_input_files("#image", str(image))
        assert "lesion.jpg" in page.locator("#drop-text").inner_text()
        page.fill("#age", "200")
        page.select_option("#sex", "female")
        page.select_option("#site", "back")
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "outside 0..120" in page.locator("#error").inner_text()
        assert page.locator("#result").is_hidden()

        page.fill("#age", "52")
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        page.wait_for_function(
            "['original', 'overlay'].every(id => document.getElementById(id).complete"
            " && document.getElementById(id).naturalWidth > 0)", timeout=15_000)
        assert page.locator("#error").is_hidden()
        assert page.locator("#bars li").count() == 7
        assert page.locator("#bars li.top").count() == 1
        top = page.locator("#bars li.top").get_attribute("data-cls")
        assert top in page.locator("#top-class").inner_text()
        assert page.evaluate("document.getElementById('overlay').naturalWidth") == 64
        assert page.evaluate("document.getElementById('original').naturalWidth") == 300
        assert "not a diagnosis" in page.locator("#result-disclaimer").inner_text()

        shot = tmp_path / "web_page.png"
        page.screenshot(path=str(shot), full_page=True)

    _shrink_png(shot)
    if os.environ.get("DERMFUSE_SCREENSHOT"):
        target = Path(os.environ["DERMFUSE_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    problems = [p for p in problems if "status of 422" not in p]  # the bad age, on purpose
    assert not problems, f"browser console errors: {problems}"
    foreign = [u for u in requests if not u.startswith((server_url, "data:", "blob:"))]
    assert not foreign, f"the page fetched from outside the server: {foreign}"


@pytest.fixture(scope="module")
def synthetic_server_url(tmp_path_factory):
    """A server whose bundle says it was trained on synthetic data, with a trust part whose
    OOD threshold flags everything, so the page's out-of-distribution state shows."""
    import json as _json

    from dermfuse.inference.bundle import update_bundle_info
    from dermfuse.inference.trust import OOD, Selective, Trust, save_trust_arrays
    from dermfuse.serve.app import create_app

    path = make_bundle(tmp_path_factory.mktemp("sb") / "b", temperature=0.04)
    info = _json.loads((path / "bundle.json").read_text())
    update_bundle_info(path, training_data={**info["training_data"], "name": "synthetic demo data", "synthetic": True})
    trust = Trust(Selective(0.0, 0.9, 0.9, 10), OOD("max_probability", -1.0, 0.95, 10, 10))
    update_bundle_info(path, trust=trust.to_dict(save_trust_arrays(path, trust)))
    app = create_app(path)
    yield from _serve(app)


def _no_horizontal_overflow(page) -> list[str]:
    """Elements whose right edge passes the viewport (nothing may be off-screen)."""
    return page.evaluate("""() => {
        const w = document.documentElement.clientWidth;
        return [...document.querySelectorAll('body *')].filter(e => {
            const r = e.getBoundingClientRect();
            return r.width > 0 && e.offsetParent !== null && r.right > w + 1;
        }).map(e => e.id || e.className || e.tagName);
    }""")


def test_page_at_phone_width_shows_model_triptych_class_choice_and_json(server_url, tmp_path):
    image = tmp_path / "lesion.png"
    image.write_bytes(png_bytes(lesion_image(5)))
    with _open_page(390, 844, accept_downloads=True) as page:
        _wait_ready(page, server_url + "/")
        assert "untrained test bundle" in page.locator("#model-data").inner_text()
        assert page.locator("#synthetic-banner").is_hidden()
        page.click("#card summary")
        assert "Intended use" in page.locator("#card-body").inner_text()
        page.set_input_files("#image", str(image))
        page.select_option("#explain", "mel")
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        page.wait_for_function("['original', 'heatmap', 'overlay'].every(id => document.getElementById(id)"
                               ".complete && document.getElementById(id).naturalWidth > 0)", timeout=15_000)
        assert "mel" in page.locator("#map-caption").inner_text()
        assert page.locator("#colorbar").is_visible()
        assert page.locator("#status").get_attribute("data-status") == "ok"
        assert page.locator("#bars li").count() == 7
        for i in range(7):  # every bar is on screen at 390 px
            box = page.locator("#bars li .track").nth(i).bounding_box()
            assert box["width"] > 20 and box["x"] + box["width"] <= 390
        assert not _no_horizontal_overflow(page)
        with page.expect_download() as dl:
            page.click("#download")
        answer = __import__("json").loads(Path(dl.value.path()).read_text())
        assert answer["explained_class"] == "mel" and set(answer["probabilities"]) >= {"mel", "nv"}
        shot = tmp_path / "web_page_390.png"
        page.screenshot(path=str(shot), full_page=True)
        from PIL import Image

        with Image.open(shot) as img:
            assert img.width == 390
        # a failing request clears the previous result
        page.fill("#age", "500")
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert page.locator("#result").is_hidden() and page.locator("#bars li").count() == 0


def test_page_labels_a_synthetic_model_and_shows_out_of_distribution(synthetic_server_url, tmp_path):
    image = tmp_path / "flat.png"
    from PIL import Image

    Image.new("RGB", (200, 150), (128, 128, 128)).save(image)
    with _open_page(390, 844) as page:
        _wait_ready(page, synthetic_server_url + "/")
        banner = page.locator("#synthetic-banner")
        assert banner.is_visible() and "SYNTHETIC" in banner.inner_text().upper()
        page.set_input_files("#image", str(image))
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        assert page.locator("#status").get_attribute("data-status") == "out_of_distribution"
        assert "no class" in page.locator("#top-class").inner_text()
        assert page.locator("#bars.unreliable").count() == 1


@pytest.fixture(scope="module")
def wide_server_url(tmp_path_factory):
    from dermfuse.serve.app import create_app

    yield from _serve(create_app(make_bundle(tmp_path_factory.mktemp("wide") / "b", image_size=(24, 32))))


def test_the_figures_of_a_4_3_model_are_4_3_and_say_so(wide_server_url, tmp_path):
    """A model trained at data.image_size [24, 32] shows what it sees: 4:3 figures, not squares."""
    image = tmp_path / "lesion.jpg"
    image.write_bytes(jpeg_bytes(lesion_image()))
    with _open_page(940, 900) as page:
        _wait_ready(page, wide_server_url + "/")
        assert "24 x 32" in page.locator("#original-caption").inner_text()
        page.set_input_files("#image", str(image))
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        page.wait_for_function("['original', 'heatmap', 'overlay'].every(id => document.getElementById(id)"
                               ".complete && document.getElementById(id).naturalWidth > 0)", timeout=15_000)
        for name in ("original", "heatmap", "overlay"):
            box = page.locator(f"#{name}").bounding_box()
            assert box["height"] / box["width"] == pytest.approx(0.75, abs=0.01), name
