"""The HTTP API against its own /openapi.json (schemathesis, in-process, a tiny bundle): no
5xx, every response matches the spec, and no request the spec allows is refused except for
what a schema cannot state (bytes that are not an image), with a 4xx naming it."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from _bundles import lesion_image, make_bundle
from dermfuse.inference.bundle import load_bundle
from dermfuse.serve.app import create_app

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import positive_data_acceptance  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

_PNG = io.BytesIO()
lesion_image(4, size=(48, 40)).save(_PNG, "PNG")
PNG = _PNG.getvalue()

_bundle = load_bundle(make_bundle(__import__("tempfile").mkdtemp() + "/b", image_size=32))
APP = create_app(_bundle)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
API = settings(max_examples=30, deadline=None, derandomize=True,
               suppress_health_check=list(HealthCheck))


def test_the_spec_states_the_real_form_constraints():
    spec = APP.openapi()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert form["required"] == ["image"]
    assert form["properties"]["image"]["format"] == "binary"
    assert set(form["properties"]["sex"]["enum"]) == {"", *_bundle.encoder.sexes}
    assert set(form["properties"]["site"]["enum"]) == {"", *_bundle.encoder.sites}
    number = form["properties"]["age"]["anyOf"][0]
    assert (number["minimum"], number["maximum"]) == (0, 120)


@API
@given(case=SCHEMA["/predict"]["POST"].as_strategy(generation_mode=GenerationMode.POSITIVE),
       real_image=st.booleans())
def test_predict_accepts_every_schema_valid_request_with_an_image(case, real_image):
    if real_image:
        case.body["image"] = PNG
    response = case.call()
    case.validate_response(response, excluded_checks=[positive_data_acceptance])
    if real_image:
        assert response.status_code == 200, response.text
    else:  # random bytes: refused by name, never a 5xx
        assert response.status_code == 200 or (
            response.status_code == 422 and response.json()["detail"].startswith("image file")), response.text


@API
@given(case=SCHEMA["/predict"]["POST"].as_strategy(generation_mode=GenerationMode.NEGATIVE))
def test_predict_refuses_schema_invalid_requests_with_a_4xx(case):
    response = case.call()
    assert 400 <= response.status_code < 500, response.text
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


@pytest.mark.parametrize("path", ["/health", "/model"])
def test_the_get_endpoints_match_the_spec(path):
    @API
    @given(case=SCHEMA[path]["GET"].as_strategy())
    def check(case):
        response = case.call()
        assert response.status_code == 200
        case.validate_response(response)

    check()
