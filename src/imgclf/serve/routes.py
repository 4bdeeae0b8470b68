"""imgclf's own routes, a thin router over the data plane: /predict (multipart files or one image as the
body, answered with labels and top-k), health, info, metrics and the web page. The answer shapes are
pydantic models, so the OpenAPI schema says what clients (and schemathesis) get."""

from __future__ import annotations

import time
from importlib import resources

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.predict import ranked
from imgclf.serve.dataplane import DataPlane, ServeError
from imgclf.serve.guard import json_error

IMAGE_FIELDS = ("file", "files", "image", "images")


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


def errors(*codes: int) -> dict:
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


def own_routes(plane: DataPlane) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("imgclf.serve").joinpath("page.html").read_text())

    @router.get("/healthz", summary="alive (the process answers)")
    async def healthz():
        return {"status": "alive"}

    @router.get("/readyz", summary="ready to predict (503 while loading or draining)", responses=errors(503))
    async def readyz():
        if plane.ready:
            return {"status": "ready"}
        return json_error(503, f"not ready: {plane.state()}", "not_ready", {"Retry-After": "1"})

    @router.get("/info", summary="the model: classes, input, training metrics; the limits; versions", responses=errors(503))
    async def info():
        return plane.info()

    @router.get("/metrics", summary="Prometheus text format")
    async def metrics():
        return Response(plane.render_metrics(), media_type=plane.metrics.content_type)

    @router.post(
        "/predict",
        summary="classify images: multipart files (field 'file'), or one image as the body",
        response_model=PredictAnswer,
        responses=errors(400, 401, 413, 415, 422, 503, 504),
        openapi_extra=_PREDICT_BODY,
    )
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=1000, description="classes per image (default 5)")):
        started = request.scope["state"]["started"]
        with plane.arrival() as arrival:
            blobs = await _uploaded(request, plane)
            probs = await plane.classify_encoded(blobs, started, arrival)
        k = top_k or plane.settings.top_k
        classes = plane.model.classes
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
            "model": plane.model.name,
            "sha256": plane.model.sha256,
            "predictions": predictions,
            "latency_ms": round((time.monotonic() - started) * 1000, 3),
        }

    return router


async def _uploaded(request: Request, plane: DataPlane) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each image in a /predict request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = plane.settings.max_images
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=limit + 1, max_fields=limit + 1, max_part_size=plane.settings.max_body)
        except StarletteHTTPException as err:
            too_many = "Too many" in str(err.detail)
            what = "more than the allowed images or fields" if too_many else "unreadable multipart body"
            code = "too_many_images" if too_many else "bad_multipart"
            raise ServeError(413 if too_many else 400, f"{what}: {err.detail}", code) from None
        blobs: list[tuple[str, bytes]] = []
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
