"""HTTP API and web page for one bundle (FastAPI + uvicorn).

Endpoints::

    POST /predict      multipart: image (file), age, sex, site, [explain], [operating_point]
                       ->  probabilities, top_class (null out of distribution), status
                       (ok | uncertain | out_of_distribution), message, probabilities_reliable,
                       confidence, ood_score, operating_point, explained_class, heatmap_png
                       (overlay), map_png (the map alone), image_png, model_id, disclaimer
    GET  /health       liveness, the model id and the batcher's counters
    GET  /model        model card (``card``), trust thresholds, classes, accepted sexes and
                       sites, age range, metrics, whether the model is synthetic or released
    GET  /openapi.json the OpenAPI spec (no /docs or /redoc: those pages load from a CDN)
    GET  /             the web page (static files under /static, no asset from the internet)

Every bad input is a 4xx with ``{"detail": "<message that names the problem>"}``: 413 for
a body or image over ``MAX_UPLOAD_BYTES`` (the body is read as it streams and refused as
soon as it passes the limit), 415 for a body that is not multipart/form-data, 422 for an
input the bundle refuses (not an image, corrupt, a decompression bomb, smaller than 32 px,
age not a number or outside 0..120, unknown sex or site, missing form field), 400 for a request that is not valid multipart.

Inference runs in one worker thread that owns torch. Requests that arrive while it is busy
are grouped into one batch (up to ``max_batch``) and go through ``predict_arrays`` and
``explain_arrays`` together, so the answers equal ``predict_one``'s and concurrent clients
share forward passes. Decoding and metadata checks run in the request threadpool.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import queue
import threading
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import CLASS_NAMES, __version__
from ..inference.bundle import Bundle, load_bundle
from ..constants import AGE_RANGE, OVERLAY_ALPHA
from ..data.cache import MIN_IMAGE_SIDE
from ..data.vocab import shorten
from ..errors import InputError
from ..inference.predictor import Predictor
from ..inference.trust import OPERATING_POINTS, Trust
from ..inference.card import model_card
from ..inference.predict import prepare_image

__all__ = ["create_app", "run_server", "MAX_UPLOAD_BYTES", "DISCLAIMER", "PredictResponse"]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest accepted image file (20 MB); a request body may be ``_FORM_OVERHEAD`` larger."""

_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the age/sex/site fields
_DRAIN_AFTER_413 = 64 * 1024 * 1024  # read (and drop) this much more so clients see the 413
STATIC_DIR = Path(__file__).parent / "static"

DISCLAIMER = (
    "Research use only. This is not a diagnosis and not a medical device: the scores come "
    "from a machine-learning model and can be wrong. Ask a doctor about any skin lesion "
    "that worries you."
)

_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class PredictResponse(BaseModel):
    """What ``POST /predict`` returns."""

    probabilities: dict[str, float] = Field(description="class -> probability; sums to 1")
    top_class: str | None = Field(description="the answer; null when the image is out of distribution")
    status: str = Field(description="ok | uncertain (refer: below the selective threshold) | "
                                    "out_of_distribution (not a dermoscopic lesion image like the training ones)")
    message: str = Field(description="the status in words")
    probabilities_reliable: bool = Field(description="false out of distribution: do not rely on the probabilities")
    confidence: float = Field(description="the top probability")
    ood_score: float | None = Field(description="out-of-distribution score (higher: further from training images); "
                                                "null for a model without one")
    operating_point: str = Field(description="argmax | melanoma")
    explained_class: str | None = Field(description="the class the heatmap explains")
    heatmap_png: str | None = Field(
        description="Grad-CAM overlay on the preprocessed image, base64 PNG (None: model has no image branch)"
    )
    map_png: str | None = Field(description="the heatmap alone, jet-coloured, base64 PNG")
    image_png: str = Field(description="the preprocessed image the model saw, base64 PNG")
    model_id: str
    disclaimer: str


STATUS_MESSAGES = {
    "ok": "The model answers with its top class.",
    "uncertain": "Uncertain - refer: the top probability is below the threshold chosen on validation images "
                 "for this model's stated coverage.",
    "out_of_distribution": "Not like the dermoscopic lesion images this model was trained on: no class is "
                           "given and the probabilities must not be relied on.",
}


class _Error(BaseModel):
    detail: str


# --- the micro-batcher -------------------------------------------------------------------


@dataclass
class _Job:
    image: np.ndarray  # (S, S, 3) uint8
    meta: np.ndarray  # (D,) float32
    future: Future
    explain: int | None = None  # class index to explain (None: the answered class)
    operating_point: str = "argmax"


class _Batcher:
    """One worker thread runs every forward pass; jobs waiting when it gets free form one batch.

    There is no waiting window: a lone request runs at once, and under load the batch is
    whatever queued up during the previous forward pass (at most ``max_batch``)."""

    def __init__(self, bundle: Bundle, max_batch: int = 8) -> None:
        self.bundle = bundle
        self.engine = Predictor.from_bundle(bundle)
        self.max_batch = max_batch
        self.batches = 0  # forward passes run
        self.items = 0  # images predicted
        self.largest_batch = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dermfuse-infer", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)
        self._thread = None

    def submit(self, image: np.ndarray, meta: np.ndarray, explain: int | None = None,
               operating_point: str = "argmax") -> Future:
        self.start()
        job = _Job(image, meta, Future(), explain, operating_point)
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # stop after this batch
                    self._queue.put(None)
                    break
                jobs.append(nxt)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if jobs:
                self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        try:
            results = _infer(self.engine, np.stack([j.image for j in jobs]), np.stack([j.meta for j in jobs]),
                             [j.explain for j in jobs], [j.operating_point for j in jobs])
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(jobs) > 1:  # one at a time, so a failure stays with the request that caused it
                for j in jobs:
                    self._process([j])
                return
            jobs[0].future.set_exception(exc)
            return
        self.batches += 1
        self.items += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        for j, r in zip(jobs, results):
            j.future.set_result(r)


def _infer(engine: Predictor, images: np.ndarray, meta: np.ndarray, explain: list[int | None],
           points: list[str]) -> list[dict[str, Any]]:
    """One engine run for a batch (probabilities, features, maps), then the trust verdict.
    images: (B, S, S, 3) uint8; meta: (B, D); explain: class index per image or None (the
    answered class at that image's operating point)."""
    from ..explain.gradcam import colorize, overlay

    trust = engine.trust or Trust()

    def choose(proba: np.ndarray) -> np.ndarray:
        answered = {op: trust.decide(proba, engine.classes, op) for op in set(points)}
        return np.array([e if e is not None else answered[op][i] for i, (e, op) in enumerate(zip(explain, points))])

    out = engine.run(images, meta, features=engine.needs_features, explain=engine.can_explain,
                     decide=choose, batch_size=len(images))
    results = []
    for i, op in enumerate(points):
        verdict = trust.assess(out.proba[i:i + 1], None if out.features is None else out.features[i:i + 1],
                               engine.classes, op)[0]
        r = {"proba": out.proba[i], "verdict": verdict, "heatmap_png": None, "map_png": None,
             "explained_class": None, "image_png": _png_base64(images[i])}
        if out.maps is not None:
            r["heatmap_png"] = _png_base64(overlay(images[i:i + 1], out.maps[i:i + 1], alpha=OVERLAY_ALPHA)[0])
            r["map_png"] = _png_base64(colorize(out.maps[i:i + 1])[0])
            r["explained_class"] = engine.classes[int(out.explained[i])]
        results.append(r)
    return results


def _png_base64(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --- request size limit ------------------------------------------------------------------


class _BodyLimit:
    """ASGI middleware: buffer request bodies of at most ``limit`` bytes; answer 413 as soon
    as a Content-Length header or the bytes received so far pass it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, f"Content-Length header {declared.decode('latin-1')!r} is not a number")
                return
            if int(declared) > self.limit:
                await self._refuse(receive, send, f"{int(declared):,} bytes")
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(receive, send, f"more than {self.limit:,} bytes")
                return
            chunks.append(body)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, receive: Receive, send: Send, what: str) -> None:
        await _send_json(
            send, 413,
            f"upload too large: the request body is {what}; the limit for an image is "
            f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB",
        )
        dropped = 0  # read a bounded amount more so the client is not reset mid-upload
        while dropped < _DRAIN_AFTER_413:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def _send_json(send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# --- request parsing ---------------------------------------------------------------------


def _prepare(bundle: Bundle, data: bytes, filename: str, age: str | None, sex: str | None,
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


def _validation_message(exc: RequestValidationError) -> str:
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


def _not_multipart(content_type: str) -> str:
    got = f"Content-Type {shorten(content_type)}" if content_type else "no Content-Type"
    return (f"POST /predict takes multipart/form-data (a file field 'image' and text fields age, "
            f"sex, site); the request has {got}")


def _declare_form(app: FastAPI, bundle: Bundle) -> None:
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
        props["operating_point"] = {"type": "string", "enum": ["", *_points(bundle)],
                                    "description": props.get("operating_point", {}).get("description", "")}
        schema["required"] = ["image"]
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


# --- the app -----------------------------------------------------------------------------


def create_app(bundle_or_path: Bundle | str | Path | None = None, max_batch: int = 8,
               operating_point: str = "argmax", device: str = "cpu") -> FastAPI:
    """The FastAPI app serving one bundle (a loaded ``Bundle``, a bundle directory, or None
    for the released model). ``operating_point``: the default of the form field of that name."""
    from ..inference.device import resolve_device
    from ..released import resolve_bundle

    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(
        resolve_bundle(bundle_or_path), device=resolve_device(device))
    batcher = _Batcher(bundle, max_batch=max_batch)
    default_point = _check_point(bundle, operating_point)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(
        title="dermfuse",
        version=__version__,
        description=f"Skin-lesion classifier (image + age, sex, body site) with Grad-CAM. {DISCLAIMER}",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their assets from a CDN; the spec is at /openapi.json
        redoc_url=None,
    )
    app.state.bundle = bundle
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, limit=MAX_UPLOAD_BYTES + _FORM_OVERHEAD)

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and not ctype.lower().startswith("multipart/form-data"):
            return JSONResponse({"detail": _not_multipart(ctype)}, status_code=415)
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    errors = {400: {"model": _Error, "description": "malformed multipart body"},
              413: {"model": _Error, "description": "image over 20 MB"},
              415: {"model": _Error, "description": "body is not multipart/form-data"},
              422: {"model": _Error, "description": "bad image, age, sex or site"}}

    @app.post("/predict", response_model=PredictResponse, responses=errors)
    async def predict(
        image: UploadFile = File(..., description="dermoscopic image (JPEG, PNG, ...), at most 20 MB"),
        age: str | None = Form(None, description="years, 0..120; empty for unknown"),
        sex: str | None = Form(None, description="one of /model's sexes; empty for unknown"),
        site: str | None = Form(None, description="body site, one of /model's sites; empty for unknown"),
        explain: str | None = Form(None, description="class whose heatmap to draw, one of /model's classes; "
                                                     "empty for the answered class"),
        operating_point: str | None = Form(None, description="argmax or melanoma (see /model's "
                                                             "operating_points); empty for the server's default"),
    ) -> dict[str, Any]:
        """Classify one lesion image with its metadata, say whether to trust the answer, and
        explain it with a Grad-CAM overlay."""
        data = await image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise StarletteHTTPException(
                413, f"upload too large: image {image.filename!r} is over the {MAX_UPLOAD_BYTES // (1024 * 1024)} MB limit"
            )
        point = _check_point(bundle, operating_point) if operating_point and operating_point.strip() else default_point
        target = None
        if explain and explain.strip():
            target = batcher.engine.class_index(explain)
            if not batcher.engine.can_explain:
                raise InputError(f"model {bundle.info['model']['name']!r} has no image branch to explain")
        img, meta = await run_in_threadpool(_prepare, bundle, data, image.filename or "", age, sex, site)
        r = await asyncio.wrap_future(batcher.submit(img, meta, target, point))
        verdict = r["verdict"]
        return {
            "probabilities": {c: float(p) for c, p in zip(bundle.classes, r["proba"])},
            "top_class": verdict.top_class,
            "status": verdict.status,
            "message": STATUS_MESSAGES[verdict.status],
            "probabilities_reliable": verdict.reliable,
            "confidence": verdict.confidence,
            "ood_score": verdict.ood_score,
            "operating_point": point,
            "explained_class": r["explained_class"],
            "heatmap_png": r["heatmap_png"],
            "map_png": r["map_png"],
            "image_png": r["image_png"],
            "model_id": bundle.model_id,
            "disclaimer": DISCLAIMER,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the server is up and holds a model."""
        return {"status": "ok", "model_id": bundle.model_id, "version": __version__,
                "inference": {"requests": batcher.items, "batches": batcher.batches,
                              "largest_batch": batcher.largest_batch}}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """What the model is and which inputs it accepts."""
        info = bundle.info
        return {
            "model_id": bundle.model_id,
            "architecture": info.get("model", {}).get("name"),
            "classes": list(bundle.classes),
            "class_names": {c: CLASS_NAMES.get(c, c) for c in bundle.classes},
            "sexes": list(bundle.encoder.sexes),
            "sites": list(bundle.encoder.sites),
            "age_range": list(AGE_RANGE),
            "image_size": bundle.image_size,
            "input_mode": bundle.input_mode,
            "max_upload_bytes": MAX_UPLOAD_BYTES,
            "metrics": info.get("metrics", {}),
            "model_card": info.get("model_card", {}),
            "training_data": info.get("training_data", {}),
            "preprocessing": info.get("preprocessing", {}),
            "synthetic": bool(info.get("training_data", {}).get("synthetic", False)),
            "released": _is_released(bundle),
            "card": model_card(info),
            "trust": (bundle.trust.to_dict() if bundle.trust is not None else None),
            "operating_points": _points(bundle),
            "default_operating_point": default_point,
            "can_explain": batcher.engine.can_explain,
            "disclaimer": DISCLAIMER,
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _declare_form(app, bundle)
    return app


def _points(bundle: Bundle) -> list[str]:
    """The operating points this bundle offers."""
    has_mel = bundle.trust is not None and bundle.trust.melanoma is not None and "mel" in bundle.classes
    return [p for p in OPERATING_POINTS if p == "argmax" or has_mel]


def _check_point(bundle: Bundle, point: str | None) -> str:
    point = (point or "argmax").strip()
    if point not in _points(bundle):
        raise InputError(f"operating point {point!r}: this model offers {_points(bundle)}")
    return point


def _is_released(bundle: Bundle) -> bool:
    from ..released import RELEASED_BUNDLE

    return bundle.path is not None and Path(bundle.path).resolve() == RELEASED_BUNDLE.resolve()


def run_server(bundle_path: Bundle | str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
               operating_point: str = "argmax", device: str = "cpu") -> None:
    """Load the bundle (None: the released model) and serve it until interrupted (``dermfuse serve``)."""
    import uvicorn

    app = create_app(bundle_path, operating_point=operating_point, device=device)
    print(f"dermfuse: serving model {app.state.bundle.model_id} at http://{host}:{port}/ "
          f"(research use only, not a diagnosis)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
