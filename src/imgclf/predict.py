"""Prediction from a bundle alone: files, folders, PIL images or arrays, preprocessed as in training.

Preprocessing (channels, size, resize mode, normalisation) comes from model.json, so a 500x500 RGB
JPEG given to a model trained on 28x28 gray images is converted exactly as training data was. Files
are decoded in parallel and go through the model in batches; a bad file gets its reason, not a label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from imgclf.data import decode
from imgclf.data.augment import test_time_views, tta_views
from imgclf.data.parallel import chunks, iter_chunks, pool_context, worker_count
from imgclf.data.walk import image_files
from imgclf.engine.bundle import BundleSpec
from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")

PARALLEL_FROM = 256  # files; below this, starting worker processes costs more than it saves


@dataclass
class Item:
    """One input of a prediction: where it came from, and its pixels or why there are none."""

    id: str
    pixels: np.ndarray | None  # uint8 C x H x W in the model's input format; None once predicted, or bad
    error: str | None = None
    warning: str | None = None  # what the image libraries said while decoding it


def _one_torch_thread() -> None:
    """One torch thread per process, so the workers together use each core once."""
    torch.set_num_threads(1)


# The classifier of this worker process, set by its pool's initializer (never in the caller's process):
# a forked worker inherits the caller's classifier, a spawned one (macOS) loads the bundle once.
_WORKER: ImageClassifier | None = None


def _adopt(clf: ImageClassifier | str, tta: bool) -> None:
    global _WORKER
    _one_torch_thread()
    _WORKER = clf if isinstance(clf, ImageClassifier) else ImageClassifier(clf, device="cpu", tta=tta)


def _decode_and_predict(paths: list[str]) -> tuple[list[str | None], np.ndarray, dict[str, str]]:
    """A worker's job: decode a chunk of files and run the model on it."""
    assert _WORKER is not None  # set by the pool's initializer (_adopt) before any job runs
    decoded, noise = _WORKER.pre_.read_files(paths)
    return (*_WORKER.predict_decoded(decoded), noise)


class ImageClassifier:
    """A trained classifier loaded from its bundle, with scikit-learn's manners (classes_, predict,
    predict_proba) and top_k. Build it with imgclf.load(path)."""

    def __init__(
        self, path: str | Path, device: str = "auto", batch_size: int | None = None, workers: int | None = None, tta: bool = False
    ):
        from imgclf.engine.bundle import load_bundle

        model, spec = load_bundle(path)
        self._setup(model, spec, Path(path), device, batch_size, workers, tta)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        spec: BundleSpec,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        tta: bool = False,
        name: str = "the model in training",
    ) -> ImageClassifier:
        """A model still in memory (the end of a run) predicting exactly as its bundle will: the run's own
        final score goes through the same code as evaluate, predict and the service."""
        self = cls.__new__(cls)
        self._setup(model, spec, Path(name), device, batch_size, None, tta)
        return self

    def _setup(self, model, spec: BundleSpec, path: Path, device, batch_size: int | None, workers: int | None, tta: bool) -> None:
        from imgclf.engine.hardware import eval_batch_size, pick_device, use_channels_last
        from imgclf.models.inference import for_inference

        self.path, self.workers = path, workers
        self.device_ = pick_device(device) if not isinstance(device, torch.device) else device
        self.spec_ = spec
        self.model_ = for_inference(model, self.device_)
        self.channels_last_ = use_channels_last(None, self.device_)
        self.model_.to(  # type: ignore[call-overload]  # torch's stubs lack to(device, memory_format=), which Module.to accepts
            self.device_, memory_format=torch.channels_last if self.channels_last_ else torch.preserve_format
        )
        self.classes_ = spec.labels
        self.pre_ = spec.preprocessing
        self.channels_ = self.pre_.channels
        self.batch_size = eval_batch_size(self.pre_.shape, batch_size)
        self.tta = test_time_views(tta, spec.hflip, str(path))
        self._scale, self._shift = self.pre_.scale_shift(self.device_)

    def __repr__(self) -> str:
        return f"ImageClassifier({self.path}, {self.spec_.architecture.name}, {len(self.classes_)} classes)"

    # -- inputs to items ---------------------------------------------------------------------------
    def items(self, x) -> list[Item]:
        """In-memory images (PIL images or arrays) as items in the model's input format."""
        from PIL import Image

        if isinstance(x, Image.Image):
            return [Item("image", self.pre_.from_pil(x))]
        if isinstance(x, (bytes, bytearray)):
            x = [x]
        if isinstance(x, (list, tuple)) and x and all(isinstance(v, (bytes, bytearray)) for v in x):
            return self.bytes_items(x)
        if isinstance(x, (list, tuple)) and x and all(isinstance(v, Image.Image) or hasattr(v, "shape") for v in x):
            return [it for v in x for it in self.items(v)]
        if hasattr(x, "shape"):
            return self._array_items(x)
        raise ImgclfError(f"cannot predict on a {type(x).__name__}; pass a path, a folder, paths, a PIL image, or an array.")

    def bytes_items(self, blobs: Sequence[bytes], ids: list[str] | None = None, max_pixels: int | None = None) -> list[Item]:
        """Encoded images (uploads, database blobs) as items: pixels, or the reason, with the same checks as files."""
        items = []
        for i, blob in enumerate(blobs):
            got = self.pre_.read(bytes(blob), max_pixels)
            image_id = ids[i] if ids else f"bytes:{i}"
            items.append(Item(image_id, None, str(got)) if isinstance(got, decode.BadImage) else Item(image_id, got))
        return items

    def worker_pool(self, workers: int | None = None) -> ProcessPoolExecutor:
        """Processes that decode files and (on a CPU) run this model, for the caller to own and reuse over
        many files_with_probabilities calls; close it with shutdown() or a with block."""
        return ProcessPoolExecutor(
            max_workers=worker_count(workers or self.workers),
            mp_context=pool_context(),
            initializer=_adopt,
            initargs=(self if pool_context().get_start_method() == "fork" else str(self.path), self.tta),
        )

    def files_with_probabilities(
        self, paths: list[str], ids: list[str] | None = None, pool: ProcessPoolExecutor | None = None
    ) -> tuple[list[Item], np.ndarray]:
        """An item per path (its error and the libraries' warnings, or None; pixels are not kept) and N x K
        probabilities, NaN for bad files.

        Files go chunk by chunk, one batch each, so memory holds a few batches whatever the number of files.
        On a CPU each worker process decodes its chunk and runs the model on it with one thread: nothing
        waits, and torch's threads do not fight the decoders for the cores (1.1x to 1.2x the images/s of
        decoding in workers and predicting here on 2 cores; benchmarks/predict.py). On a GPU the workers
        decode and this process feeds the device. An empty path (a CSV id without an image) gets its error.
        pool: a worker_pool() the caller owns (a service predicting many times); without one, a pool lives
        for this call when there are enough files to pay for starting it.
        """
        ids = ids or paths
        own_pool = pool is None and len(paths) >= PARALLEL_FROM and worker_count(self.workers) > 1
        if own_pool:
            pool = self.worker_pool()
        workers = pool._max_workers if pool is not None else 1  # type: ignore[attr-defined]  # private, absent from the stubs
        in_workers = pool is not None and self.device_.type == "cpu"
        spans = chunks(len(paths), workers, size=self.batch_size)
        present = [[p for p in paths[a:b] if p] for a, b in spans]
        fn: Callable[[list[str]], Any]
        if in_workers:
            fn, jobs = _decode_and_predict, [(ps,) for ps in present]
        else:
            fn, jobs = self.pre_.read_files, [(ps,) for ps in present]
        items: list[Item] = []
        probs = np.full((len(paths), len(self.classes_)), np.nan, dtype=np.float32)
        try:
            for (a, b), out in zip(spans, iter_chunks(fn, jobs, workers, "predicting", pool=pool)):
                errors, chunk_probs, noise = out if in_workers else (*self.predict_decoded(out[0]), out[1])
                found = iter(zip(errors, chunk_probs))
                for row, (image_id, path) in enumerate(zip(ids[a:b], paths[a:b]), start=a):
                    if not path:
                        items.append(Item(image_id, None, "missing file: no image for this id"))
                        continue
                    error, probs[row] = next(found)
                    items.append(Item(image_id, None, error, noise.get(path)))
        finally:
            if own_pool:
                assert pool is not None  # own_pool: made above
                pool.shutdown(cancel_futures=True)
        return items, probs

    def predict_decoded(self, decoded: list[np.ndarray | str]) -> tuple[list[str | None], np.ndarray]:
        """decode_many's output (pixels, or a reason) as (reason or None, probabilities) per file."""
        errors = [r if isinstance(r, str) else None for r in decoded]
        items = [Item("", None if e else cast(np.ndarray, r), e) for r, e in zip(decoded, errors)]  # no reason: r is pixels
        return errors, self.probabilities(items)

    def _array_items(self, x) -> list[Item]:
        from imgclf.data.arrays import to_nchw_uint8

        a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        # 3-D: N x H x W gray images, unless the axes say one colour image (H x W x 3|4, or 3|4 x H x W for
        # a colour model); H x W is one gray image.
        one_color = a.ndim == 3 and (a.shape[-1] in (3, 4) or (self.channels_ == 3 and a.shape[0] in (3, 4)))
        if a.ndim == 2 or one_color:
            a = a[None]
        batch, _ = to_nchw_uint8(a)
        batch = self.pre_.conform(batch)
        return [Item(f"array:{i}", im) for i, im in enumerate(batch)]

    # -- the model ---------------------------------------------------------------------------------
    def probabilities(self, items: list[Item]) -> np.ndarray:
        """N x K probabilities for the items with pixels (rows of bad items are NaN)."""
        out = np.full((len(items), len(self.classes_)), np.nan, dtype=np.float32)
        rows = [i for i, it in enumerate(items) if it.pixels is not None]
        for a in range(0, len(rows), self.batch_size):
            part = rows[a : a + self.batch_size]
            out[part] = self.predict_pixels(np.stack([cast(np.ndarray, items[i].pixels) for i in part]))  # rows with pixels
        return out

    def predict_split(self, images) -> np.ndarray:
        """N x K probabilities for every image of an ImageSet (a split of load_data), read from its cache
        a few batches at a time."""
        step = self.batch_size * 8
        parts = [self.predict_pixels(images.take(np.arange(a, min(a + step, len(images))))) for a in range(0, len(images), step)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)), np.float32)

    @torch.inference_mode()
    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The core every input goes through: uint8 N x C x H x W in the model's input format (pre_.shape;
        pre_.conform makes any size so) -> N x K probabilities, in batches of at most batch_size.

        Safe to call from one thread at a time per classifier (a service's inference thread)."""
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.pre_.shape or pixels.dtype != np.uint8:
            raise ImgclfError(
                f"predict_pixels takes uint8 N x {' x '.join(map(str, self.pre_.shape))} arrays, not "
                f"{pixels.dtype} {' x '.join(map(str, pixels.shape))}; use predict() for other inputs."
            )
        out = []
        for a in range(0, len(pixels), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(pixels[a : a + self.batch_size])).to(self.device_)
            x = x.float().mul_(self._scale).add_(self._shift)
            if self.channels_last_:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.tta:
                p = sum(w * self.model_(view).float().softmax(1) for view, w in tta_views(x))
            else:
                p = self.model_(x).float().softmax(1)
            out.append(p.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)), np.float32)

    def _checked(self, x) -> tuple[list[Item], np.ndarray]:
        paths = self._paths(x)
        items, probs = self.files_with_probabilities(paths) if paths is not None else (self.items(x), None)
        bad = [it for it in items if it.error]
        if bad:
            raise ImgclfError(
                f"{bad[0].id}: {bad[0].error}; remove it, or use predict_rows() (or 'imgclf predict'), which "
                "reports bad files row by row and goes on."
            )
        if not items:
            raise ImgclfError(f"{x}: no images to predict on.")
        return items, probs if probs is not None else self.probabilities(items)

    @staticmethod
    def _paths(x) -> list[str] | None:
        """The files behind a path, folder or list of them; None for in-memory images."""
        if isinstance(x, (str, Path)):
            x = [x]
        if isinstance(x, (list, tuple)) and x and all(isinstance(v, (str, Path)) for v in x):
            return [p for v in x for p in (image_files(v) if Path(v).is_dir() else [str(v)])]
        return None

    def predict_proba(self, x) -> np.ndarray:
        """Probabilities, one row per image, columns in classes_ order."""
        return self._checked(x)[1]

    def predict(self, x) -> list[str]:
        """Class names, one per image (a path, a folder, paths, a PIL image, or an array of images)."""
        probs = self.predict_proba(x)
        return [self.classes_[i] for i in probs.argmax(1)]

    def predict_rows(self, inputs, top_k: int = 0, proba: bool = False) -> list[dict]:
        """One row per input file (paths, folders, CSVs of ids, as `imgclf predict` takes them): id, label,
        and for a file that cannot be read its error instead of a label; nothing raises for a bad file."""
        from imgclf.submission import prediction_rows, resolve_inputs

        ids, paths = resolve_inputs([str(v) for v in ([inputs] if isinstance(inputs, (str, Path)) else inputs)])
        return prediction_rows(self, ids, paths, top_k, proba)[1]

    def top_k(self, x, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most likely classes of each image with their probabilities, best first."""
        probs = self.predict_proba(x)
        return [[(self.classes_[j], float(p[j])) for j in ranked(p, k)] for p in probs]


def ranked(probs: np.ndarray, k: int) -> np.ndarray:
    """The indices of one image's k most likely classes, best first, ties in class order: the one top-k
    rule of predict, its CSV columns and the service."""
    return np.argsort(-probs, kind="stable")[: max(0, min(k, len(probs)))]


def load(
    path: str | Path, device: str = "auto", batch_size: int | None = None, workers: int | None = None, tta: bool = False
) -> ImageClassifier:
    """A run directory or bundle, ready to predict; workers: processes for files (default: all cores);
    tta: average each image's probabilities over its mirror and 1-pixel shifts (6x the compute)."""
    return ImageClassifier(path, device=device, batch_size=batch_size, workers=workers, tta=tta)
