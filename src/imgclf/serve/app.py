"""The service's routes: imgclf's own /predict, the open inference protocol under /v2, health, info,
metrics and the web page.

Whatever a client sends, the answer is a JSON error with a 4xx status saying what was wrong, never a
500: bodies are bounded before they are parsed, images go through the decoder's checks, tensors are
checked against the model's input, and the model runs on one inference thread behind a bounded queue.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.data.decode import BadImage
from imgclf.predict import ranked
from imgclf.serve import v2
from imgclf.serve.batcher import Expired, MicroBatcher, QueueFull
from imgclf.serve.metrics import Metrics
from imgclf.serve.model import model_name
from imgclf.serve.settings import ServeSettings

log = logging.getLogger("imgclf")

# Routes a load balancer or an orchestrator probes without credentials, and the page (static, no data:
# its requests carry the token the person types).
OPEN_ROUTES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"}
IMAGE_FIELDS = ("file", "files", "image", "images")
STATUS_OF_KIND = {"format": 415, "too_large": 413, "empty": 400, "corrupt": 400, "unreadable": 400}


class ServeError(Exception):
    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.reason, self.headers, self.extra = status, reason, headers or {}, extra


# -- response shapes (the OpenAPI schema that clients and schemathesis read) ---------------------------
class ClassScore(BaseModel):
    label: str | int
    probability: float


class ImagePrediction(BaseModel):
    file: str
    label: str | int
    top_k: list[ClassScore]


class PredictAnswer(BaseModel):
    model: str
    sha256: str
    predictions: list[ImagePrediction]
    latency_ms: float


class ErrorAnswer(BaseModel):
    error: str
    reason: str | None = None
    file: str | None = None


def _errors(*codes: int) -> dict:
    return {c: {"model": ErrorAnswer} for c in codes}


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "data": {"type": "array"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                        "parameters": {"type": "object"},
                    },
                }
            }
        },
    }
}


class Service:
    """What the routes share: the settings, the model once loaded, the batcher, the figures, the state."""

    def __init__(self, settings: ServeSettings, model=None):
        self.settings, self.model, self.metrics = settings, model, Metrics()
        self.batcher: MicroBatcher | None = None
        self.failed: str | None = None
        self.draining = False
        self.arriving = 0  # requests accepted and being read or decoded, not yet queued for the model
        self.in_flight = 0  # prediction requests between arrival and answer, bounded by max_queue
        self.token = settings.token()
        if model is not None:
            self._start_batcher()

    def load(self) -> None:
        """Load and warm the bundle (in a thread: /healthz answers meanwhile, /readyz says 503)."""
        from imgclf.serve.model import ServedModel

        try:
            self.model = ServedModel(self.settings)
            self._start_batcher()
            log.debug(
                "loaded: %s (%s, %d classes), warmed up in %.2f s",
                self.model.name,
                self.model.spec.architecture.name,
                len(self.model.classes),
                self.model.warm_s,
            )
        except Exception as err:  # shown by /readyz and the log; the process stays up to say so
            self.failed = f"{type(err).__name__}: {err}"
            log.error("the model did not load: %s", self.failed)

    def _start_batcher(self) -> None:
        s = self.settings
        self.batcher = MicroBatcher(
            self.model.clf.predict_pixels,
            s.max_batch,
            s.max_wait_ms / 1000,
            s.max_queue,
            observe=self.metrics.batch.observe,
            arriving=lambda: self.arriving,
        )

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    def state(self) -> str:
        return "draining" if self.draining else "ready" if self.batcher else f"failed: {self.failed}" if self.failed else "loading"

    def require_ready(self) -> None:
        if not self.ready:
            self.metrics.rejections.labels(self.state().split(":")[0]).inc()
            raise ServeError(503, f"not ready: {self.state()}", "not_ready", {"Retry-After": "1"})

    def arrival(self) -> Arrival:
        """A request on its way to the model (read, decoded), counted until it is queued or refused, so the
        batcher knows whether company is coming."""
        self.require_ready()
        return Arrival(self)

    async def infer(self, pixels: np.ndarray, started: float, arrival: Arrival) -> np.ndarray:
        remaining = self.settings.timeout_s - (time.monotonic() - started)
        try:
            future = self.batcher.submit(pixels, remaining)
        except QueueFull:
            arrival.done()
            self.metrics.rejections.labels("queue_full").inc()
            raise ServeError(503, "the service is busy (its queue is full); retry shortly", "queue_full", {"Retry-After": "1"}) from None
        arrival.done()
        self.metrics.queue.set(self.batcher.depth())
        try:
            probs = await asyncio.wait_for(asyncio.wrap_future(future), max(remaining, 0.001))
        except (TimeoutError, Expired):
            self.metrics.rejections.labels("deadline").inc()
            raise ServeError(504, f"no answer within the {self.settings.timeout_s:g} s deadline", "deadline") from None
        finally:
            self.metrics.queue.set(self.batcher.depth())
        self.metrics.images.inc(len(pixels))
        return probs

    def decode(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        """Encoded images as the model's uint8 N x C x H x W; the first bad one fails the request, named."""
        out = []
        for name, blob in blobs:
            got = self.model.pre.read(blob, self.settings.max_pixels)
            if isinstance(got, BadImage):
                status = STATUS_OF_KIND.get(got.kind, 400)
                self.metrics.rejections.labels(f"image_{got.kind}").inc()
                raise ServeError(status, f"{name}: {got}", f"image_{got.kind}", file=name)
            out.append(got)
        return np.stack(out)

    def check_count(self, n: int) -> None:
        if n == 0:
            self.metrics.rejections.labels("no_image").inc()
            raise ServeError(400, "no image in the request: send multipart files in the field 'file', or one image as the body", "no_image")
        if n > self.settings.max_images:
            self.metrics.rejections.labels("too_many_images").inc()
            raise ServeError(
                413, f"{n} images in one request, more than the {self.settings.max_images} allowed (--max-images)", "too_many_images"
            )


class Arrival:
    def __init__(self, service: Service):
        self.service, self.counted = service, True
        service.arriving += 1

    def done(self) -> None:
        if self.counted:
            self.counted = False
            self.service.arriving -= 1

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc) -> None:
        self.done()


def _json_error(status: int, message: str, reason: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"error": message, **({"reason": reason} if reason else {}), **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """Pure ASGI, around the app: counts and times every answer by route and status, checks the token,
    and bounds the body (from Content-Length, and from the bytes as they arrive) before anything parses it."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        scope.setdefault("state", {})["started"] = started
        status = {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        service = self.service
        predicting = scope["method"] == "POST" and (
            scope["path"] == "/predict" or (scope["path"].startswith("/v2/models/") and scope["path"].endswith("/infer"))
        )
        if predicting:
            service.in_flight += 1
        try:
            refusal = self._refuse(scope)
            if refusal is None and predicting and service.in_flight > service.settings.max_queue:
                # Admission before any work: under overload the event loop, not the model, is what saturates
                # first, and requests let in beyond this would only wait past their deadline (504) and hold memory.
                service.metrics.rejections.labels("queue_full").inc()
                refusal = _json_error(
                    503, "the service is busy (too many requests in progress); retry shortly", "queue_full", {"Retry-After": "1"}
                )
            if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, refusal = await self._read_body(scope, receive)
                if refusal is None:
                    receive = _replay(body)
            if refusal is not None:
                await refusal(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            if predicting:
                service.in_flight -= 1
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            m = self.service.metrics
            m.requests.labels(label, str(status["code"])).inc()
            m.latency.labels(label).observe(time.monotonic() - started)

    def _refuse(self, scope):
        token = self.service.token
        if token is None or scope["path"] in OPEN_ROUTES:
            return None
        given = dict(scope["headers"]).get(b"authorization", b"")
        expected = b"Bearer " + token.encode()
        if hmac.compare_digest(given, expected):
            return None
        self.service.metrics.rejections.labels("unauthorized").inc()
        return _json_error(
            401, "missing or wrong token: send the header 'Authorization: Bearer <token>'", "unauthorized", {"WWW-Authenticate": "Bearer"}
        )

    async def _read_body(self, scope, receive):
        limit = self.service.settings.max_body
        too_big = _json_error(
            413, f"the body is larger than the {self.service.settings.max_upload_mb:g} MB allowed (--max-upload-mb)", "body_too_large"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return b"", _json_error(400, "Content-Length is not a number", "bad_request")
            if declared > limit:
                self.service.metrics.rejections.labels("body_too_large").inc()
                return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", _json_error(400, "the client went away mid-body", "disconnect")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                self.service.metrics.rejections.labels("body_too_large").inc()
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # nothing more will come; the server cancels this on disconnect
        return {"type": "http.disconnect"}

    return receive


def create_app(settings: ServeSettings, model=None) -> FastAPI:
    """The ASGI app; model: an already loaded ServedModel (tests, embedding), else loaded at startup."""
    service = Service(settings.check(), model)

    @asynccontextmanager
    async def lifespan(app):
        if service.model is None and settings.workers > 1:
            # One of several processes on a shared socket: it starts accepting only once its model is loaded,
            # so the kernel hands connections to the workers that are ready, never a 503 "loading" from this one.
            await run_in_threadpool(service.load)
        elif service.model is None:  # one process: /healthz answers while the model loads, /readyz says 503
            threading.Thread(target=service.load, name="imgclf-load", daemon=True).start()
        yield
        service.draining = True
        if service.batcher is not None:
            await run_in_threadpool(service.batcher.close)

    app = FastAPI(
        title="imgclf", summary="An image classifier trained with imgclf", lifespan=lifespan, version=__import__("imgclf").__version__
    )
    app.state.service = service

    @app.exception_handler(ServeError)
    async def _serve_error(request, err: ServeError):
        return _json_error(err.status, str(err), err.reason, err.headers, **err.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _json_error(422, f"{where}: {first.get('msg', 'invalid')}", "invalid_parameter")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, err: StarletteHTTPException):
        return _json_error(err.status_code, str(err.detail), None, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request, err: Exception):  # a bug of ours, not the client's: said once in the log
        log.exception("internal error on %s", request.url.path)
        return _json_error(500, "internal error", "internal")

    # -- people ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("imgclf.serve").joinpath("page.html").read_text())

    # -- health, info, metrics ---------------------------------------------------------------------
    @app.get("/healthz", summary="alive (the process answers)")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="ready to predict (503 while loading or draining)", responses=_errors(503))
    async def readyz():
        if service.ready:
            return {"status": "ready"}
        return _json_error(503, f"not ready: {service.state()}", "not_ready", {"Retry-After": "1"})

    @app.get("/info", summary="the model: classes, input, training metrics; the limits; versions", responses=_errors(503))
    async def info():
        service.require_ready()
        s = settings
        return {
            **service.model.info(),
            "limits": {
                "max_upload_mb": s.max_upload_mb,
                "max_images": s.max_images,
                "max_pixels": s.max_pixels,
                "timeout_s": s.timeout_s,
                "max_queue": s.max_queue,
            },
            "batching": {"max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms},
            "workers": s.workers,
        }

    @app.get("/metrics", summary="Prometheus text format")
    async def metrics():
        if service.batcher is not None:
            service.metrics.queue.set(service.batcher.depth())
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    # -- imgclf's own route ------------------------------------------------------------------------
    @app.post(
        "/predict",
        summary="classify images: multipart files (field 'file'), or one image as the body",
        response_model=PredictAnswer,
        responses=_errors(400, 401, 413, 415, 422, 503, 504),
        openapi_extra=_PREDICT_BODY,
    )
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=1000, description="classes per image (default 5)")):
        started = request.scope["state"]["started"]
        with service.arrival() as arrival:
            blobs = await _uploaded(request, service)
            service.check_count(len(blobs))
            pixels = await run_in_threadpool(service.decode, blobs)
            probs = await service.infer(pixels, started, arrival)
        k = top_k or settings.top_k
        classes = service.model.classes
        predictions = []
        for (name, _), p in zip(blobs, probs):
            order = ranked(p, k)
            predictions.append(
                {
                    "file": name,
                    "label": classes[order[0]],
                    "top_k": [{"label": classes[j], "probability": round(float(p[j]), 6)} for j in order],
                }
            )
        return {
            "model": service.model.name,
            "sha256": service.model.sha256,
            "predictions": predictions,
            "latency_ms": round((time.monotonic() - started) * 1000, 3),
        }

    # -- the open inference protocol ---------------------------------------------------------------
    @app.get("/v2", summary="v2 server metadata")
    async def v2_server():
        return {"name": "imgclf", "version": app.version, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="v2 liveness (the status alone, no body)", response_class=Response)
    async def v2_live():
        return Response(status_code=200)

    @app.get("/v2/health/ready", summary="v2 readiness (the status alone, no body)", response_class=Response, responses=_errors(503))
    async def v2_ready():
        return Response(status_code=200) if service.ready else _json_error(503, f"not ready: {service.state()}", "not_ready")

    # The served name as the example, so that generated requests (schemathesis) reach the model.
    served = settings.name or model_name(settings.model)
    name_doc = {"examples": [served], "description": "the model's name (GET /info)"}

    def _model(name: str, version: str | None = None):
        service.require_ready()
        if name != service.model.name or version not in (None, "1"):
            raise ServeError(
                404,
                f"no model {name!r}{f' version {version!r}' if version else ''}; this server has {service.model.name!r} version 1",
                "unknown_model",
            )
        return service.model

    @app.get("/v2/models/{name}", summary="v2 model metadata", responses=_errors(404, 503))
    async def v2_model(name: str = PathParam(**name_doc)):
        return v2.metadata(_model(name))

    @app.get("/v2/models/{name}/versions/{version}", summary="v2 model metadata (a version)", responses=_errors(404, 503))
    async def v2_model_version(name: str = PathParam(**name_doc), version: str = PathParam(examples=["1"])):
        return v2.metadata(_model(name, version))

    @app.get("/v2/models/{name}/ready", summary="v2 model readiness", response_class=Response, responses=_errors(404, 503))
    async def v2_model_ready(name: str = PathParam(**name_doc)):
        _model(name)
        return Response(status_code=200)

    @app.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="v2 model readiness (a version)",
        response_class=Response,
        responses=_errors(404, 503),
    )
    async def v2_model_version_ready(name: str = PathParam(**name_doc), version: str = PathParam(examples=["1"])):
        _model(name, version)
        return Response(status_code=200)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        started = request.scope["state"]["started"]
        model = _model(name, version)
        with service.arrival() as arrival:
            try:
                req, binary = v2.parse(await request.body(), request.headers.get(v2.HEADER))
                kind, value = v2.input_tensor(req, binary, settings.max_images, settings.max_body)
                names, as_binary = v2.requested_outputs(req)
                if kind == "bytes":
                    service.check_count(len(value))
                    pixels = await run_in_threadpool(service.decode, [(f"element {i}", b) for i, b in enumerate(value)])
                else:
                    pixels = v2.to_nchw(value, model.pre.shape)
                    service.check_count(len(pixels))
            except v2.ProtocolError as err:
                service.metrics.rejections.labels("bad_tensor").inc()
                raise ServeError(err.status, str(err), "bad_tensor") from None
            probs = await service.infer(pixels, started, arrival)
        body, headers = v2.response(model, req, probs, names, as_binary)
        return Response(body, media_type="application/octet-stream" if headers else "application/json", headers=headers)

    infer_doc = {"responses": _errors(400, 401, 404, 413, 415, 503, 504), "openapi_extra": _INFER_BODY}

    @app.post("/v2/models/{name}/infer", summary="v2 inference", **infer_doc)
    async def v2_infer(request: Request, name: str = PathParam(**name_doc)):
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="v2 inference (a version)", **infer_doc)
    async def v2_infer_version(request: Request, name: str = PathParam(**name_doc), version: str = PathParam(examples=["1"])):
        return await infer(request, name, version)

    return Guard(app, service)


async def _uploaded(request: Request, service: Service) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each image in a /predict request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = service.settings.max_images
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=limit + 1, max_fields=limit + 1, max_part_size=service.settings.max_body)
        except StarletteHTTPException as err:
            too_many = "Too many" in str(err.detail)
            what = "more than the allowed images or fields" if too_many else "unreadable multipart body"
            code = "too_many_images" if too_many else "bad_multipart"
            raise ServeError(413 if too_many else 400, f"{what}: {err.detail}", code) from None
        blobs = []
        try:
            for field, value in form.multi_items():
                if field not in IMAGE_FIELDS or isinstance(value, str):
                    raise ServeError(
                        400,
                        f"unexpected form field {field[:60]!r}{' (text, not a file)' if isinstance(value, str) else ''}: "
                        "send the images as files in the field 'file'",
                        "wrong_field",
                    )
                blobs.append((value.filename or f"{field} {len(blobs)}", await value.read()))
        finally:
            await form.close()
        return blobs
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        body = await request.body()
        return [("body", body)] if body else []
    raise ServeError(
        415,
        f"Content-Type {ctype[:60] or '(none)'!r} is not accepted: send multipart/form-data with files in the "
        "field 'file', or one image with Content-Type image/png, image/jpeg, ...",
        "content_type",
    )
