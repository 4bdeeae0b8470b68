"""The open inference protocol's routes (KServe v2), a thin router over the data plane: server and model
metadata, health and readiness, and inference (v2.py reads and writes the tensors)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from imgclf.serve import v2
from imgclf.serve.dataplane import DataPlane, ServeError
from imgclf.serve.guard import json_error
from imgclf.serve.model import model_name
from imgclf.serve.routes import errors

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


def v2_routes(plane: DataPlane, version: str) -> APIRouter:
    router = APIRouter()
    settings = plane.settings

    @router.get("/v2", summary="v2 server metadata")
    async def v2_server():
        return {"name": "imgclf", "version": version, "extensions": ["binary_tensor_data"]}

    @router.get("/v2/health/live", summary="v2 liveness (the status alone, no body)", response_class=Response)
    async def v2_live():
        return Response(status_code=200)

    @router.get("/v2/health/ready", summary="v2 readiness (the status alone, no body)", response_class=Response, responses=errors(503))
    async def v2_ready():
        return Response(status_code=200) if plane.ready else json_error(503, f"not ready: {plane.state()}", "not_ready")

    # The served name as the example, so that generated requests (schemathesis) reach the model.
    served = settings.name or model_name(settings.model)

    def name_path() -> Any:
        return PathParam(examples=[served], description="the model's name (GET /info)")

    @router.get("/v2/models/{name}", summary="v2 model metadata", responses=errors(404, 503))
    async def v2_model(name: str = name_path()):
        return v2.metadata(plane.model_for(name))

    @router.get("/v2/models/{name}/versions/{version}", summary="v2 model metadata (a version)", responses=errors(404, 503))
    async def v2_model_version(name: str = name_path(), version: str = PathParam(examples=["1"])):
        return v2.metadata(plane.model_for(name, version))

    @router.get("/v2/models/{name}/ready", summary="v2 model readiness", response_class=Response, responses=errors(404, 503))
    async def v2_model_ready(name: str = name_path()):
        plane.model_for(name)
        return Response(status_code=200)

    @router.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="v2 model readiness (a version)",
        response_class=Response,
        responses=errors(404, 503),
    )
    async def v2_model_version_ready(name: str = name_path(), version: str = PathParam(examples=["1"])):
        plane.model_for(name, version)
        return Response(status_code=200)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        started = request.scope["state"]["started"]
        model = plane.model_for(name, version)
        with plane.arrival() as arrival:
            try:
                req, binary = v2.parse(await request.body(), request.headers.get(v2.HEADER))
                kind, value = v2.input_tensor(req, binary, settings.max_images, settings.max_body)
                names, as_binary = v2.requested_outputs(req)
                if kind == "bytes":
                    probs = await plane.classify_encoded([(f"element {i}", b) for i, b in enumerate(value)], started, arrival)
                else:
                    probs = await plane.classify_pixels(v2.to_nchw(value, model.pre.shape), started, arrival)
            except v2.ProtocolError as err:
                plane.metrics.rejections.labels("bad_tensor").inc()
                raise ServeError(err.status, str(err), "bad_tensor") from None
        body, headers = v2.response(model, req, probs, names, as_binary)
        return Response(body, media_type="application/octet-stream" if headers else "application/json", headers=headers)

    infer_errors = errors(400, 401, 404, 413, 415, 503, 504)

    @router.post("/v2/models/{name}/infer", summary="v2 inference", responses=infer_errors, openapi_extra=_INFER_BODY)
    async def v2_infer(request: Request, name: str = name_path()):
        return await infer(request, name, None)

    @router.post(
        "/v2/models/{name}/versions/{version}/infer", summary="v2 inference (a version)", responses=infer_errors, openapi_extra=_INFER_BODY
    )
    async def v2_infer_version(request: Request, name: str = name_path(), version: str = PathParam(examples=["1"])):
        return await infer(request, name, version)

    return router
