"""The form of ``POST /predict``: decoding the upload and encoding age, sex and site
(`prepare_upload`), the messages for a request that is not a valid form, the operating points
a bundle offers, and the form's real constraints written into /openapi.json (`declare_form`)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from ..constants import AGE_RANGE
from ..data.cache import MIN_IMAGE_SIDE
from ..data.vocab import shorten
from ..errors import InputError
from ..inference.bundle import Bundle
from ..inference.predict import prepare_image
from ..inference.trust import OPERATING_POINTS

__all__ = ["check_operating_point", "declare_form", "not_multipart_message", "operating_points", "prepare_upload",
           "validation_message"]

log = logging.getLogger(__name__)


def prepare_upload(bundle: Bundle, data: bytes, filename: str, age: str | None, sex: str | None,
                   site: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode the image and encode the metadata → ((S, S, 3) uint8, (D,) float32); InputError if bad."""
    # One rule for age, sex and site spellings (dermfuse.data.vocab), shared with the CLI.
    meta = bundle.encoder.encode_one(age, sex, site)[: bundle.model_meta_dim]
    name = shorten(filename) if filename else "(no name)"
    try:
        image = prepare_image(bundle, data)
    except InputError as exc:
        raise InputError(str(exc).replace("'<uploaded bytes>'", name)) from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug on odd bytes is still a bad upload
        log.warning("decoding upload %s failed unexpectedly", name, exc_info=True)
        raise InputError(f"image file {name} cannot be decoded ({type(exc).__name__}: {exc})") from None
    return image, meta.astype(np.float32)


def validation_message(exc: RequestValidationError) -> str:
    """The 422 message for a form FastAPI refused: which field is missing or wrong, and how to send it."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "form")]
        field = ".".join(loc) or "request"
        if err.get("type") == "missing":
            hint = "attach an image file (JPEG or PNG)" if field == "image" else "send it as a form field"
            parts.append(f"form field {field!r} is missing; {hint}")
        elif field == "image":
            parts.append("form field 'image' must be a file (a multipart part with a filename), not text")
        else:
            parts.append(f"form field {shorten(field)}: {shorten(err.get('msg', 'invalid'), 200)}")
    return "; ".join(parts) or "invalid request"


def not_multipart_message(content_type: str) -> str:
    """The 415 message for a POST /predict body that is not multipart/form-data."""
    got = f"Content-Type {shorten(content_type)}" if content_type else "no Content-Type"
    return (f"POST /predict takes multipart/form-data (a file field 'image' and text fields age, "
            f"sex, site); the request has {got}")


def operating_points(bundle: Bundle) -> list[str]:
    """The operating points this bundle offers."""
    has_mel = bundle.trust is not None and bundle.trust.melanoma is not None and "mel" in bundle.classes
    return [p for p in OPERATING_POINTS if p == "argmax" or has_mel]


def check_operating_point(bundle: Bundle, point: str | None) -> str:
    """The operating point asked for (empty: argmax), or InputError if this bundle lacks it."""
    point = (point or "argmax").strip()
    if point not in operating_points(bundle):
        raise InputError(f"operating point {point!r}: this model offers {operating_points(bundle)}")
    return point


def declare_form(app: FastAPI, bundle: Bundle) -> None:
    """State the form's real constraints in /openapi.json: the image a required binary file,
    age a number in AGE_RANGE (or empty / 'unknown'), sex and site the bundle's levels."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = generate()
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        ref = body.get("$ref", "").rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][ref] if ref else body
        props = schema["properties"]
        props["image"] = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                          "description": props.get("image", {}).get("description", "image file")
                          + f"; the shorter side at least {MIN_IMAGE_SIDE} px"}
        props["age"] = {"anyOf": [{"type": "number", "minimum": AGE_RANGE[0], "maximum": AGE_RANGE[1]},
                                  {"type": "string", "enum": ["", "unknown"]}],
                        "description": props.get("age", {}).get("description", "")}
        for field, levels in (("sex", bundle.encoder.sexes), ("site", bundle.encoder.sites)):
            props[field] = {"type": "string", "enum": ["", *levels],
                            "description": props.get(field, {}).get("description", "")
                            + " (other spellings such as 'M' or 'posterior torso' are mapped onto these)"}
        explainable = bundle.input_mode != "image" or getattr(bundle.model, "cam_layer", None) is not None
        props["explain"] = {"type": "string", "enum": ["", *(bundle.classes if explainable else [])],
                            "description": props.get("explain", {}).get("description", "")}
        props["operating_point"] = {"type": "string", "enum": ["", *operating_points(bundle)],
                                    "description": props.get("operating_point", {}).get("description", "")}
        schema["required"] = ["image"]
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
