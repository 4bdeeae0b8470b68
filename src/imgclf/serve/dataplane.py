"""The data plane: the served model, its batcher, limits, figures and state, behind calls that know
nothing of HTTP (KServe's split). imgclf's own routes and the v2 routes are thin routers over it, and
tests drive it without a server.

A refusal is a ServeError: the status a router answers with, the reason clients and the metrics key
on, and a message saying what was wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from starlette.concurrency import run_in_threadpool

from imgclf.data.decode import BadImage
from imgclf.serve.batcher import Expired, MicroBatcher, QueueFull
from imgclf.serve.metrics import Metrics
from imgclf.serve.settings import ServeSettings

log = logging.getLogger("imgclf")

STATUS_OF_KIND = {"format": 415, "too_large": 413, "empty": 400, "corrupt": 400, "unreadable": 400}


class ServeError(Exception):
    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.reason, self.headers, self.extra = status, reason, headers or {}, extra


class DataPlane:
    """What every route shares: the settings, the model once loaded, the batcher, the figures, the state."""

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

    # -- life ----------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load and warm the bundle (in a thread: liveness answers meanwhile, readiness says not yet)."""
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
        except Exception as err:  # shown by readiness and the log; the process stays up to say so
            self.failed = f"{type(err).__name__}: {err}"
            log.error("the model did not load: %s", self.failed)

    def _start_batcher(self) -> None:
        s = self.settings
        self.batcher = MicroBatcher(
            self.model.predict_pixels,
            s.max_batch,
            s.max_wait_ms / 1000,
            s.max_queue,
            observe=self.metrics.batch.observe,
            arriving=lambda: self.arriving,
        )

    def close(self) -> None:
        """Drain: new requests are refused, queued ones are answered, then the inference thread ends."""
        self.draining = True
        if self.batcher is not None:
            self.batcher.close()

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    def state(self) -> str:
        return "draining" if self.draining else "ready" if self.batcher else f"failed: {self.failed}" if self.failed else "loading"

    def require_ready(self) -> None:
        if not self.ready:
            self.metrics.rejections.labels(self.state().split(":")[0]).inc()
            raise ServeError(503, f"not ready: {self.state()}", "not_ready", {"Retry-After": "1"})

    # -- the model and what is known of it -----------------------------------------------------------
    def model_for(self, name: str, version: str | None = None):
        """The served model by the name (and version) a client asked for; one model, version 1."""
        self.require_ready()
        if name != self.model.name or version not in (None, "1"):
            raise ServeError(
                404,
                f"no model {name!r}{f' version {version!r}' if version else ''}; this server has {self.model.name!r} version 1",
                "unknown_model",
            )
        return self.model

    def info(self) -> dict:
        """The model (classes, input, training metrics), the limits, batching and workers."""
        self.require_ready()
        s = self.settings
        return {
            **self.model.info(),
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

    def render_metrics(self) -> bytes:
        if self.batcher is not None:
            self.metrics.queue.set(self.batcher.depth())
        return self.metrics.render()

    # -- inference -----------------------------------------------------------------------------------
    def arrival(self) -> Arrival:
        """A request on its way to the model (read, decoded), counted until it is queued or refused, so the
        batcher knows whether company is coming."""
        self.require_ready()
        return Arrival(self)

    async def classify_encoded(self, blobs: list[tuple[str, bytes]], started: float, arrival: Arrival) -> np.ndarray:
        """Encoded images (name, bytes) -> N x K probabilities: counted, decoded (off the event loop),
        inferred."""
        self.check_count(len(blobs))
        pixels = await run_in_threadpool(self.decode, blobs)
        return await self.infer(pixels, started, arrival)

    async def classify_pixels(self, pixels: np.ndarray, started: float, arrival: Arrival) -> np.ndarray:
        """uint8 N x C x H x W in the model's input format -> N x K probabilities."""
        self.check_count(len(pixels))
        return await self.infer(pixels, started, arrival)

    async def infer(self, pixels: np.ndarray, started: float, arrival: Arrival) -> np.ndarray:
        """Through the batcher, within what is left of the request's deadline (counted from `started`)."""
        remaining = self.settings.timeout_s - (time.monotonic() - started)
        batcher = self.batcher
        assert batcher is not None  # arrival() let the request in only when ready
        try:
            future = batcher.submit(pixels, remaining)
        except QueueFull:
            arrival.done()
            self.metrics.rejections.labels("queue_full").inc()
            raise ServeError(503, "the service is busy (its queue is full); retry shortly", "queue_full", {"Retry-After": "1"}) from None
        arrival.done()
        self.metrics.queue.set(batcher.depth())
        try:
            probs = await asyncio.wait_for(asyncio.wrap_future(future), max(remaining, 0.001))
        except (TimeoutError, Expired):
            self.metrics.rejections.labels("deadline").inc()
            raise ServeError(504, f"no answer within the {self.settings.timeout_s:g} s deadline", "deadline") from None
        finally:
            self.metrics.queue.set(batcher.depth())
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
    def __init__(self, plane: DataPlane):
        self.plane, self.counted = plane, True
        plane.arriving += 1

    def done(self) -> None:
        if self.counted:
            self.counted = False
            self.plane.arriving -= 1

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc) -> None:
        self.done()
