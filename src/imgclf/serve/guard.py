"""The request guard, pure ASGI around the routers: it counts and times every answer by route and status,
checks the token, admits prediction requests up to the queue's bound, and bounds the body (from
Content-Length, and from the bytes as they arrive) before anything parses it."""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi.responses import JSONResponse

from imgclf.serve.dataplane import DataPlane

# Routes a load balancer or an orchestrator probes without credentials, and the page (static, no data:
# its requests carry the token the person types).
OPEN_ROUTES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"}


def json_error(status: int, message: str, reason: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"error": message, **({"reason": reason} if reason else {}), **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """Pure ASGI, around the app: counts and times every answer by route and status, checks the token,
    and bounds the body (from Content-Length, and from the bytes as they arrive) before anything parses it."""

    def __init__(self, app, plane: DataPlane):
        self.app, self.plane = app, plane

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

        plane = self.plane
        predicting = scope["method"] == "POST" and (
            scope["path"] == "/predict" or (scope["path"].startswith("/v2/models/") and scope["path"].endswith("/infer"))
        )
        if predicting:
            plane.in_flight += 1
        try:
            refusal = self._refuse(scope)
            if refusal is None and predicting and plane.in_flight > plane.settings.max_queue:
                # Admission before any work: under overload the event loop, not the model, is what saturates
                # first, and requests let in beyond this would only wait past their deadline (504) and hold memory.
                plane.metrics.rejections.labels("queue_full").inc()
                refusal = json_error(
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
                plane.in_flight -= 1
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            m = self.plane.metrics
            m.requests.labels(label, str(status["code"])).inc()
            m.latency.labels(label).observe(time.monotonic() - started)

    def _refuse(self, scope):
        token = self.plane.token
        if token is None or scope["path"] in OPEN_ROUTES:
            return None
        given = dict(scope["headers"]).get(b"authorization", b"")
        expected = b"Bearer " + token.encode()
        if hmac.compare_digest(given, expected):
            return None
        self.plane.metrics.rejections.labels("unauthorized").inc()
        return json_error(
            401, "missing or wrong token: send the header 'Authorization: Bearer <token>'", "unauthorized", {"WWW-Authenticate": "Bearer"}
        )

    async def _read_body(self, scope, receive):
        limit = self.plane.settings.max_body
        too_big = json_error(
            413, f"the body is larger than the {self.plane.settings.max_upload_mb:g} MB allowed (--max-upload-mb)", "body_too_large"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return b"", json_error(400, "Content-Length is not a number", "bad_request")
            if declared > limit:
                self.plane.metrics.rejections.labels("body_too_large").inc()
                return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", json_error(400, "the client went away mid-body", "disconnect")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                self.plane.metrics.rejections.labels("body_too_large").inc()
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
