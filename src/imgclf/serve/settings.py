"""What a service accepts and how it batches: every limit has a default and a flag."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass

from imgclf.errors import ImgclfError

ENV = "IMGCLF_SERVE_SETTINGS"  # how uvicorn's worker processes receive the settings


@dataclass(frozen=True)
class ServeSettings:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    name: str | None = None  # the model's name in /v2/models/{name}; default: the bundle folder's name
    max_batch: int = 64  # images per forward pass
    max_wait_ms: float = 2.0  # how long the first waiting request waits for company
    max_queue: int = 256  # prediction requests in progress (read, decoded, queued); beyond it, 503 with Retry-After
    timeout_s: float = 10.0  # a request's deadline from arrival; past it, 504
    workers: int = 1  # server processes, each with the bundle and its own inference thread
    max_upload_mb: float = 10.0  # body size
    max_images: int = 64  # images per request
    max_pixels: int = 40_000_000  # width x height of one image
    top_k: int = 5
    token_env: str | None = None  # environment variable holding the bearer token
    device: str = "auto"
    tta: bool = False
    drain_s: float = 8.0  # SIGTERM: how long queued requests may take to finish before the exit

    @property
    def max_body(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def token(self) -> str | None:
        if not self.token_env:
            return None
        value = os.environ.get(self.token_env, "")
        if not value:
            raise ImgclfError(
                f"--token-env {self.token_env}: that environment variable is empty or unset; export {self.token_env}=<a long random token>."
            )
        return value

    def check(self) -> ServeSettings:
        for name in ("max_batch", "max_queue", "workers", "max_images", "max_pixels", "top_k"):
            if getattr(self, name) < 1:
                raise ImgclfError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.max_wait_ms < 0:
            raise ImgclfError("--max-wait-ms cannot be negative.")
        if self.max_upload_mb <= 0 or self.timeout_s <= 0:
            raise ImgclfError("--max-upload-mb and --timeout-s must be positive.")
        if not 0 <= self.port < 65536:
            raise ImgclfError(f"--port {self.port} is not a port number (0-65535).")
        self.token()
        return self

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeSettings:
        return cls(**json.loads(os.environ[ENV]))


# The command line's flags: the help text of each field (its default comes from the dataclass above).
FLAG_HELP = {
    "host": (str, "address to listen on; 127.0.0.1 is this machine only"),
    "port": (int, "port; 0 picks a free one"),
    "name": (str, "the model's name in /v2/models/NAME (default: the bundle folder's name)"),
    "max_batch": (int, "images per forward pass"),
    "max_wait_ms": (float, "how long a batch waits for requests on their way; 0 with --max-batch 1 turns batching off"),
    "max_queue": (int, "prediction requests in progress before 503s"),
    "timeout_s": (float, "a request's deadline; past it, 504"),
    "workers": (int, "server processes, each with the model; torch threads per process = cores / workers"),
    "max_upload_mb": (float, "largest request body"),
    "max_images": (int, "images per request"),
    "max_pixels": (int, "width x height of one image"),
    "top_k": (int, "classes per image in /predict's answer (?top_k= per request)"),
    "token_env": (str, "require 'Authorization: Bearer <token>', the token read from this environment variable"),
    "drain_s": (float, "on SIGTERM, how long queued requests may take"),
    "tta": (bool, "average each image with its mirror and 1-pixel shifts (when training used flips)"),
    "device": (str, "cpu, cuda, cuda:N, mps or auto"),
}
