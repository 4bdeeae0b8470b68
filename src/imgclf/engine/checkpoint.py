"""Checkpoints that survive a kill at any moment and load without unpickling anything but tensors.

A checkpoint holds tensors and plain containers only (loadable with weights_only=True): model and
optimizer state, the grad scaler's, the epoch and step, the best metric, callback state and the RNG
states, so that a resumed run continues exactly where the saved one stood.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from pathlib import Path
from typing import cast

import numpy as np
import torch

from imgclf.errors import ImgclfError


def atomic_write(path: Path, write) -> None:
    """write(file) into a temporary file beside path, fsync it, rename it over path, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C until the block ends, so an epoch's checkpoint and its metrics row land together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        # the legacy state (get_state's default) is a tuple; numpy's stubs give the no-argument call a dict
        "numpy": torch.from_numpy(cast(tuple, np.random.get_state())[1].astype(np.int64)),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise ImgclfError(f"{path}: no checkpoint there; resume takes a run directory holding checkpoints/last.pt.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign, damaged or pickled-object file: refuse it by name
        raise ImgclfError(
            f"{path}: not a readable imgclf checkpoint ({type(err).__name__}: {str(err)[:160]}); "
            "use the run's checkpoints/best.pt, or start a new run."
        ) from None
