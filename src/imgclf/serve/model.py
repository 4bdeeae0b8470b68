"""The bundle a service answers with: loaded once per worker process, warmed up, described."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.data.parallel import usable_cpus
from imgclf.engine import cpu
from imgclf.engine.bundle import bundle_dir, read_spec

log = logging.getLogger("imgclf")


def bundle_sha256(path: str | Path) -> str:
    """sha256 of model.safetensors then model.json: what a client pins to know which model answered."""
    folder = bundle_dir(path)
    h = hashlib.sha256()
    for name in ("model.safetensors", "model.json"):
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_name(path: str | Path) -> str:
    """The bundle folder's name, in the characters a URL path segment keeps as they are."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", bundle_dir(path).resolve().name).strip("-.")
    return name or "model"


def torch_threads(workers: int) -> int:
    """Threads per worker process so that workers x threads never exceed the cores."""
    return max(1, usable_cpus() // max(1, workers))


class ServedModel:
    def __init__(self, settings):
        from imgclf.predict import load

        self.settings = settings
        spec = read_spec(settings.model)  # a damaged bundle fails here, in one line, before anything listens
        self.clf = load(settings.model, device=settings.device, batch_size=max(settings.max_batch, 1), tta=settings.tta)
        # The inference thread's torch threads follow the cores other processes leave free (engine/cpu.py).
        self.threads = cpu.ThreadShare(cap=torch_threads(settings.workers), what="the model", hint="OMP_NUM_THREADS caps it")
        busy = self.threads.start() if self.clf.device_.type == "cpu" else None
        if busy:
            log.info(busy)
        self.pre = self.clf.pre_
        self.spec = spec
        self.name = settings.name or model_name(settings.model)
        self.sha256 = bundle_sha256(settings.model)
        self.classes = self.clf.classes_
        self.warm_s = self.warm_up()

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The batcher's forward pass; between two, the thread count follows the free cores."""
        if self.clf.device_.type == "cpu":
            self.threads.follow()
        return self.clf.predict_pixels(pixels)

    def warm_up(self) -> float:
        """A forward pass at every batch size the batcher makes often (powers of two up to max_batch), so
        the first requests do not pay for allocations and kernel choices."""
        start = time.perf_counter()
        sizes = sorted({min(2**i, self.settings.max_batch) for i in range(0, 16) if 2 ** (i - 1) < self.settings.max_batch} | {1})
        for n in sizes:
            self.clf.predict_pixels(np.zeros((n, *self.pre.shape), np.uint8))
        return time.perf_counter() - start

    def info(self) -> dict:
        import imgclf

        metrics = self.spec.metrics
        return {
            "name": self.name,
            "sha256": self.sha256,
            "architecture": self.spec.architecture.name,
            "classes": self.classes,
            "input": self.pre.describe(),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None},
            "tta": self.clf.tta,
            "device": str(self.clf.device_),
            "versions": {"imgclf": imgclf.__version__, "torch": torch.__version__, **self.spec.versions},
        }
