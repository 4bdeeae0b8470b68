"""The service's app: the data plane, imgclf's own routes and the open inference protocol's as routers
over it, one JSON shape for every error, and the request guard around it all.

Whatever a client sends, the answer is a JSON error with a 4xx status saying what was wrong, never a
500: bodies are bounded before they are parsed, images go through the decoder's checks, tensors are
checked against the model's input, and the model runs on one inference thread behind a bounded queue.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgclf.serve.dataplane import DataPlane, ServeError
from imgclf.serve.guard import Guard, json_error
from imgclf.serve.routes import own_routes
from imgclf.serve.settings import ServeSettings
from imgclf.serve.v2_routes import v2_routes

log = logging.getLogger("imgclf")


def create_app(settings: ServeSettings, model=None) -> Guard:
    """The ASGI app; model: an already loaded ServedModel (tests, embedding), else loaded at startup."""
    plane = DataPlane(settings.check(), model)

    @asynccontextmanager
    async def lifespan(app):
        if plane.model is None and settings.workers > 1:
            # One of several processes on a shared socket: it starts accepting only once its model is loaded,
            # so the kernel hands connections to the workers that are ready, never a 503 "loading" from this one.
            await run_in_threadpool(plane.load)
        elif plane.model is None:  # one process: /healthz answers while the model loads, /readyz says 503
            threading.Thread(target=plane.load, name="imgclf-load", daemon=True).start()
        yield
        await run_in_threadpool(plane.close)

    version = __import__("imgclf").__version__
    app = FastAPI(title="imgclf", summary="An image classifier trained with imgclf", lifespan=lifespan, version=version)
    app.state.plane = plane

    @app.exception_handler(ServeError)
    async def _serve_error(request, err: ServeError):
        return json_error(err.status, str(err), err.reason, err.headers, **err.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return json_error(422, f"{where}: {first.get('msg', 'invalid')}", "invalid_parameter")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, err: StarletteHTTPException):
        return json_error(err.status_code, str(err.detail), None, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request, err: Exception):  # a bug of ours, not the client's: said once in the log
        log.exception("internal error on %s", request.url.path)
        return json_error(500, "internal error", "internal")

    app.include_router(own_routes(plane))
    app.include_router(v2_routes(plane, version))
    return Guard(app, plane)
