"""uvicorn around the app, with a drain on SIGTERM: readiness turns 503 at once, nothing new is accepted,
what is queued is answered, then the process exits 0 within settings.drain_s (+ 2 s to close)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import uvicorn

from imgclf.serve.settings import ENV, ServeSettings

log = logging.getLogger("imgclf")


def app_from_env():
    """uvicorn's factory in each worker process: the settings travel in the environment."""
    from imgclf.serve.app import create_app

    return create_app(ServeSettings.from_env())


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains before it stops: the listener stays open long
    enough for probes to see 503 and for in-flight requests to end, then uvicorn's own graceful exit."""

    def __init__(self, config: uvicorn.Config, drain_s: float):
        super().__init__(config)
        self.drain_s, self._draining = drain_s, False

    def handle_exit(self, sig, frame) -> None:
        if self._draining:  # a second signal: stop now
            return super().handle_exit(sig, frame)
        self._draining = True
        threading.Thread(target=self._drain, name="imgclf-drain", daemon=True).start()

    def _drain(self) -> None:
        plane = _plane(self.config.loaded_app)
        if plane is not None:
            plane.draining = True
            until = time.monotonic() + self.drain_s
            while time.monotonic() < until and plane.batcher is not None and not plane.batcher.idle():
                time.sleep(0.02)
            time.sleep(0.1)  # answers of the last batch reach their sockets
        self.should_exit = True


def _plane(app):
    """The DataPlane behind uvicorn's wrappers (its proxy-headers and lifespan layers keep .app)."""
    for _ in range(8):
        if hasattr(app, "plane"):
            return app.plane
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def serve(settings: ServeSettings, ready_line=print) -> None:
    """Run until SIGTERM or Ctrl-C; returns after the drain."""
    settings.check()
    if not settings.is_loopback() and not settings.token_env:
        log.warning(
            "listening on %s without a token: anyone who can reach this address can use the model; "
            "pass --token-env VAR (and set VAR) to require 'Authorization: Bearer <token>'",
            settings.host,
        )
    os.environ[ENV] = settings.to_env()
    config = uvicorn.Config(
        "imgclf.serve.server:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_s)),
        lifespan="on",
    )
    if settings.workers > 1:
        # uvicorn's supervisor: worker processes each load the bundle. Its workers are uvicorn's own Server, so
        # SIGTERM is uvicorn's graceful exit in each: the socket closes at once, requests in progress finish
        # (and the batcher's queue with them, at the app's shutdown), without the 503 phase of one process.
        from uvicorn.supervisors import Multiprocess

        sock = config.bind_socket()
        port = sock.getsockname()[1]
        threading.Thread(target=_announce_workers, args=(settings, port, ready_line), daemon=True).start()
        Multiprocess(config, sockets=[sock]).run()
        return
    server = DrainingServer(config, settings.drain_s)
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *a: None)  # uvicorn re-raises the signal it caught once it is done: exit 0, not -15
    try:
        threading.Thread(target=_announce, args=(server, settings, ready_line), daemon=True).start()
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _announce(server: DrainingServer, settings: ServeSettings, ready_line) -> None:
    """One line once the model is loaded and warmed, with the address (the real port when 0 was asked)."""
    while not server.should_exit:
        plane = _plane(server.config.loaded_app) if server.started else None
        if plane is not None and (plane.ready or plane.failed):
            if plane.failed:
                ready_line(f"imgclf: error: the model did not load: {plane.failed}")
                server.should_exit = True
                return
            port = settings.port
            if server.servers and server.servers[0].sockets:
                port = server.servers[0].sockets[0].getsockname()[1]
            ready_line(
                f"ready: {plane.model.name} on http://{settings.host}:{port} (page /, docs /docs, "
                f"v2 /v2/models/{plane.model.name}); Ctrl-C or SIGTERM drains and stops"
            )
            return
        time.sleep(0.05)


def _announce_workers(settings: ServeSettings, port: int, ready_line, timeout: float = 300) -> None:
    """The ready line of a multi-process server, once a worker answers /readyz (each loads its own model)."""
    import urllib.error
    import urllib.request

    from imgclf.serve.model import model_name

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{port}/readyz"
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    name = settings.name or model_name(settings.model)
                    ready_line(
                        f"ready: {name} on http://{settings.host}:{port} ({settings.workers} worker processes; page /, "
                        f"docs /docs, v2 /v2/models/{name}); Ctrl-C or SIGTERM drains and stops"
                    )
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
