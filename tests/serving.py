"""A real `imgclf serve` process on a free localhost port, for the service's tests and benchmark."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np

READY = re.compile(r"^ready: \S+ on (http://[^ ]+) ")


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, lines: list[str]):
        self.proc, self.url, self.lines = proc, url, lines

    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def running_server(model, *flags: str, env: dict | None = None, timeout: float = 60):
    """`imgclf serve MODEL --port 0 FLAGS` until it prints its ready line; stopped (SIGTERM) afterwards.
    The server uses one torch thread unless env says otherwise (tests share the cores)."""
    cmd = [sys.executable, "-m", "imgclf", "serve", str(model), "--port", "0", "--device", "cpu", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}  # a None value removes the variable
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in env.items() if v is not None})
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            m = READY.match(line)
            if m:
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    found.wait(timeout)
    if not url:
        proc.kill()
        raise AssertionError(f"the server did not become ready:\n{''.join(lines)[-3000:]}")
    server = Server(proc, url[0], lines)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def wait_for(predicate, timeout: float = 10.0, every: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
