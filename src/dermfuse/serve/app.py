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

The pieces: `dermfuse.serve.batcher` (the worker thread and one batch's inference),
`dermfuse.serve.forms` (the upload, the form's messages and its OpenAPI description),
`dermfuse.serve.body_limit` (the 413 as the body streams); this module holds the routes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import CLASS_NAMES, __version__
from ..constants import AGE_RANGE
from ..errors import ConfigError, InputError
from ..image_size import size_json
from ..inference.bundle import Bundle, load_bundle
from ..inference.card import model_card
from .batcher import Batcher
from .body_limit import BodyLimit
from .forms import (
    check_operating_point,
    declare_form,
    not_multipart_message,
    operating_points,
    prepare_upload,
    validation_message,
)

__all__ = ["create_app", "run_server", "MAX_UPLOAD_BYTES", "DISCLAIMER", "PredictResponse"]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest accepted image file (20 MB); a request body may be ``_FORM_OVERHEAD`` larger."""

_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the age/sex/site fields
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


# --- the app -----------------------------------------------------------------------------


def create_app(bundle_or_path: Bundle | str | Path | None = None, max_batch: int = 8,
               operating_point: str = "argmax", device: str = "cpu") -> FastAPI:
    """The FastAPI app serving one bundle (a loaded ``Bundle``, a bundle directory, or None
    for the released model). ``operating_point``: the default of the form field of that name."""
    from ..inference.device import resolve_device
    from ..released import resolve_bundle

    bundle = bundle_or_path if isinstance(bundle_or_path, Bundle) else load_bundle(
        resolve_bundle(bundle_or_path), device=resolve_device(device))
    batcher = Batcher(bundle, max_batch=max_batch)
    default_point = check_operating_point(bundle, operating_point)

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
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES + _FORM_OVERHEAD, image_limit=MAX_UPLOAD_BYTES)
    _add_error_handlers(app)
    _add_predict_route(app, bundle, batcher, default_point)
    _add_info_routes(app, bundle, batcher, default_point)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    declare_form(app, bundle)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"detail": ...}``: 422 for refused input, 415 for a body that is
    not multipart, the HTTP status for the others, 500 (logged) for anything unexpected."""

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and not ctype.lower().startswith("multipart/form-data"):
            return JSONResponse({"detail": not_multipart_message(ctype)}, status_code=415)
        return JSONResponse({"detail": validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)


_PREDICT_ERRORS = {400: {"model": _Error, "description": "malformed multipart body"},
                   413: {"model": _Error, "description": "image over 20 MB"},
                   415: {"model": _Error, "description": "body is not multipart/form-data"},
                   422: {"model": _Error, "description": "bad image, age, sex or site"}}


def _add_predict_route(app: FastAPI, bundle: Bundle, batcher: Batcher, default_point: str) -> None:
    """``POST /predict``: decode and check in the threadpool, infer in the batcher."""

    @app.post("/predict", response_model=PredictResponse, responses=_PREDICT_ERRORS)
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
        asked = operating_point and operating_point.strip()
        point = check_operating_point(bundle, operating_point) if asked else default_point
        target = _explain_target(bundle, batcher, explain)
        img, meta = await run_in_threadpool(prepare_upload, bundle, data, image.filename or "", age, sex, site)
        r = await asyncio.wrap_future(batcher.submit(img, meta, target, point))
        return _predict_response(bundle, r, point)


def _explain_target(bundle: Bundle, batcher: Batcher, explain: str | None) -> int | None:
    """The class index the form's ``explain`` names (None: empty, explain the answer)."""
    if not (explain and explain.strip()):
        return None
    target = batcher.engine.class_index(explain)
    if not batcher.engine.can_explain:
        raise InputError(f"model {bundle.info['model']['name']!r} has no image branch to explain")
    return target


def _predict_response(bundle: Bundle, r: dict[str, Any], point: str) -> dict[str, Any]:
    """The ``PredictResponse`` body for one batcher result ``r``."""
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


def _add_info_routes(app: FastAPI, bundle: Bundle, batcher: Batcher, default_point: str) -> None:
    """``GET /health``, ``GET /model`` and the web page at ``GET /``."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the server is up and holds a model."""
        return {"status": "ok", "model_id": bundle.model_id, "version": __version__,
                "inference": {"requests": batcher.items, "batches": batcher.batches,
                              "largest_batch": batcher.largest_batch}}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """What the model is and which inputs it accepts."""
        return _model_info(bundle, batcher, default_point)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _PAGE_CSP})


def _model_info(bundle: Bundle, batcher: Batcher, default_point: str) -> dict[str, Any]:
    """The ``GET /model`` body: the card, the accepted inputs and the trust thresholds."""
    info = bundle.info
    return {
        "model_id": bundle.model_id,
        "architecture": info.get("model", {}).get("name"),
        "classes": list(bundle.classes),
        "class_names": {c: CLASS_NAMES.get(c, c) for c in bundle.classes},
        "sexes": list(bundle.encoder.sexes),
        "sites": list(bundle.encoder.sites),
        "age_range": list(AGE_RANGE),
        "image_size": size_json(bundle.image_size),  # a side (square) or [height, width]
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
        "operating_points": operating_points(bundle),
        "default_operating_point": default_point,
        "can_explain": batcher.engine.can_explain,
        "disclaimer": DISCLAIMER,
    }


def _is_released(bundle: Bundle) -> bool:
    from ..released import RELEASED_BUNDLE

    return bundle.path is not None and Path(bundle.path).resolve() == RELEASED_BUNDLE.resolve()


def run_server(bundle_path: Bundle | str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
               operating_point: str = "argmax", device: str = "cpu") -> None:
    """Load the bundle (None: the released model) and serve it until interrupted (``dermfuse serve``)."""
    import uvicorn

    app = create_app(bundle_path, operating_point=operating_point, device=device)
    sock = _listen(host, port)  # before saying "serving": a port in use is an error, not a promise
    print(f"dermfuse: serving model {app.state.bundle.model_id} at http://{host}:{port}/ "
          f"(research use only, not a diagnosis)", flush=True)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket on host:port for uvicorn; ConfigError naming the address where the port
    is taken or the host is not this machine's."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected 0..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"--host {host}: cannot listen there ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = "; is another server using it? pick another with --port" if e.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.listen(2048)  # now: a second server started at the same moment cannot bind it too
    sock.set_inheritable(True)
    return sock
