"""Prediction from a bundle alone: files, folders, PIL images or arrays, preprocessed as in training.

Preprocessing (channels, size, resize mode, normalisation) comes from model.json, so a 500x500 RGB
JPEG given to a model trained on 28x28 gray images is converted exactly as training data was. Files
are decoded in parallel and go through the model in batches; a bad file gets its reason, not a label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.data import decode
from imgclf.data.listing import is_hidden, is_image_name
from imgclf.data.parallel import chunks, run_chunks, worker_count
from imgclf.errors import ImgclfError

PARALLEL_FROM = 256  # files; below this, starting worker processes costs more than it saves


@dataclass
class Item:
    """One input of a prediction: where it came from, and its pixels or why there are none."""

    id: str
    pixels: np.ndarray | None  # uint8 C x H x W in the model's input format
    error: str | None = None


def image_files(folder: Path) -> list[Path]:
    """Image files under a folder, recursively, in sorted order; hidden files left out."""
    found = []
    for dirpath, dirnames, filenames in sorted(os.walk(folder)):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found += [Path(dirpath) / f for f in sorted(filenames) if not is_hidden(f) and is_image_name(f)]
    return found


class ImageClassifier:
    """A trained classifier loaded from its bundle, with scikit-learn's manners (classes_, predict,
    predict_proba) and top_k. Build it with imgclf.load(path)."""

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 256, workers: int | None = None):
        from imgclf.engine.bundle import load_bundle
        from imgclf.engine.hardware import pick_device

        self.path, self.batch_size, self.workers = Path(path), batch_size, workers
        self.device_ = pick_device(device)
        self.model_, self.spec_ = load_bundle(path)
        self.model_.to(self.device_)
        self.classes_ = list(self.spec_["classes"])
        inp = self.spec_["input"]
        self.channels_, self.size_, self.resize_ = inp["channels"], tuple(inp["size"]), inp["resize"]
        norm = self.spec_["normalization"]
        c = self.channels_
        std = torch.tensor(norm["std"], dtype=torch.float32).view(1, c, 1, 1)
        self._scale = (1 / (255 * std)).to(self.device_)
        self._shift = (-torch.tensor(norm["mean"], dtype=torch.float32).view(1, c, 1, 1) / std).to(self.device_)

    def __repr__(self) -> str:
        return f"ImageClassifier({self.path}, {self.spec_['architecture']['name']}, {len(self.classes_)} classes)"

    # -- inputs to items ---------------------------------------------------------------------------
    def items(self, x) -> list[Item]:
        """Any accepted input as a list of items in the model's input format, bad files included."""
        from PIL import Image

        if isinstance(x, (str, Path)):
            path = Path(x)
            if path.is_dir():
                return self.decode_files([str(p) for p in image_files(path)])
            return self.decode_files([str(path)])
        if isinstance(x, Image.Image):
            return [Item("image", decode.prepare(x.copy(), self.channels_, self.size_, self.resize_))]
        if isinstance(x, (list, tuple)) and all(isinstance(v, (str, Path)) for v in x):
            files = [str(p) for v in x for p in (image_files(Path(v)) if Path(v).is_dir() else [Path(v)])]
            return self.decode_files(files)
        if isinstance(x, (list, tuple)) and all(isinstance(v, Image.Image) for v in x):
            return [it for v in x for it in self.items(v)]
        if hasattr(x, "shape"):
            return self._array_items(x)
        raise ImgclfError(f"cannot predict on a {type(x).__name__}; pass a path, a folder, paths, a PIL image, or an array.")

    def decode_files(self, paths: list[str], ids: list[str] | None = None) -> list[Item]:
        ids = ids or paths
        existing = [p for p in paths if p]
        workers = worker_count(self.workers) if len(existing) >= PARALLEL_FROM else 1
        args = (self.channels_, self.size_, self.resize_)
        decoded = [r for part in run_chunks(decode.decode_many, [(existing[a:b], *args) for a, b in chunks(len(existing), workers)],
                                            workers, "decoding") for r in part]
        results = iter(decoded)
        items = []
        for image_id, path in zip(ids, paths):
            if not path:
                items.append(Item(image_id, None, "missing file: no image for this id"))
                continue
            r = next(results)
            items.append(Item(image_id, None, r) if isinstance(r, str) else Item(image_id, r))
        return items

    def _array_items(self, x) -> list[Item]:
        from imgclf.config import DataConfig
        from imgclf.data.arrays import to_nchw_uint8
        from imgclf.data.sources import _conform

        a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        # 3-D: N x H x W gray images, unless the axes say one colour image (H x W x 3|4, or 3|4 x H x W for
        # a colour model); H x W is one gray image.
        one_color = a.ndim == 3 and (a.shape[-1] in (3, 4) or (self.channels_ == 3 and a.shape[0] in (3, 4)))
        if a.ndim == 2 or one_color:
            a = a[None]
        batch, _ = to_nchw_uint8(a)
        batch, _ = _conform(batch, DataConfig(image_size=self.size_, channels=self.channels_, resize=self.resize_))
        return [Item(f"array:{i}", im) for i, im in enumerate(batch)]

    # -- the model ---------------------------------------------------------------------------------
    @torch.no_grad()
    def probabilities(self, items: list[Item]) -> np.ndarray:
        """N x K probabilities for the items with pixels (rows of bad items are NaN)."""
        out = np.full((len(items), len(self.classes_)), np.nan, dtype=np.float32)
        rows = [i for i, it in enumerate(items) if it.pixels is not None]
        self.model_.eval()
        for a in range(0, len(rows), self.batch_size):
            part = rows[a:a + self.batch_size]
            x = torch.from_numpy(np.stack([items[i].pixels for i in part])).to(self.device_)
            x = x.float().mul_(self._scale).add_(self._shift)
            out[part] = self.model_(x).float().softmax(1).cpu().numpy()
        return out

    def _checked(self, x) -> tuple[list[Item], np.ndarray]:
        items = self.items(x)
        bad = [it for it in items if it.error]
        if bad:
            raise ImgclfError(f"{bad[0].id}: {bad[0].error}; remove it, or use 'imgclf predict', which reports bad files and goes on.")
        if not items:
            raise ImgclfError(f"{x}: no images to predict on.")
        return items, self.probabilities(items)

    def predict_proba(self, x) -> np.ndarray:
        """Probabilities, one row per image, columns in classes_ order."""
        return self._checked(x)[1]

    def predict(self, x) -> list[str]:
        """Class names, one per image (a path, a folder, paths, a PIL image, or an array of images)."""
        probs = self.predict_proba(x)
        return [self.classes_[i] for i in probs.argmax(1)]

    def top_k(self, x, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most likely classes of each image with their probabilities, best first."""
        probs = self.predict_proba(x)
        k = min(k, len(self.classes_))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes_[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def load(path: str | Path, device: str = "auto", batch_size: int = 256) -> ImageClassifier:
    """A run directory or bundle, ready to predict."""
    return ImageClassifier(path, device=device, batch_size=batch_size)


def resolve_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Command-line inputs as (ids, paths) in input order: files, folders (recursive, ids relative to
    the folder), or a CSV of ids (ids as written, images found beside it as for training data)."""
    from imgclf.data.listing import _image_folder_for, _read_csv

    ids, paths = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            for f in image_files(path):
                ids.append(str(f.relative_to(path)))
                paths.append(str(f))
        elif path.suffix.lower() == ".csv" and path.is_file():
            rows, id_col, _ = _read_csv(path, None, None)
            raw = [(r.get(id_col) or "").strip() for r in rows]
            folder = _image_folder_for(path, path.stem, [i for i in raw[:20] if i])
            for image_id in raw:
                ids.append(image_id)
                paths.append((folder.find(image_id) or "") if image_id else "")
        elif path.exists():
            ids.append(text)
            paths.append(text)
        else:
            raise ImgclfError(f"{text}: no such file, folder or CSV; check the path.")
    return ids, paths


def prediction_rows(clf: ImageClassifier, ids: list[str], paths: list[str], top_k: int = 0, proba: bool = False) -> tuple[list[str], list[dict]]:
    """The submission table: id, label (empty with an error for bad inputs), optional top-k and probabilities."""
    items = clf.decode_files(paths, ids)
    probs = clf.probabilities(items)
    columns = ["id", "label"]
    k = min(top_k, len(clf.classes_))
    columns += [f"top{i}_{what}" for i in range(1, k + 1) for what in ("label", "prob")]
    columns += [f"prob_{c}" for c in clf.classes_] if proba else []
    columns.append("error")
    rows = []
    for item, p in zip(items, probs):
        row = {"id": item.id, "label": "", "error": item.error or ""}
        if item.error is None:
            order = np.argsort(-p, kind="stable")
            row["label"] = clf.classes_[order[0]]
            for i, j in enumerate(order[:k], start=1):
                row[f"top{i}_label"], row[f"top{i}_prob"] = clf.classes_[j], f"{p[j]:.6f}"
            if proba:
                row.update({f"prob_{c}": f"{v:.6f}" for c, v in zip(clf.classes_, p)})
        rows.append(row)
    return columns, rows


def fill_template(template: Path, rows: list[dict]) -> tuple[list[str], list[dict]]:
    """The template's columns and row order, its label column filled with the predictions by id."""
    from imgclf.data.listing import _read_csv

    t_rows, id_col, label_col = _read_csv(template, None, None)
    if label_col is None:
        raise ImgclfError(f"{template}: no label column (label, class or target) to fill; pass a sample submission with one.")
    by_id = {str(r["id"]): r for r in rows}
    for key in list(by_id):  # ids given with an extension match template ids without one
        by_id.setdefault(os.path.splitext(key)[0], by_id[key])
    missing = [r[id_col] for r in t_rows if str(r[id_col]).strip() not in by_id]
    if missing:
        raise ImgclfError(f"{template}: {len(missing)} id(s) were not among the inputs (e.g. {missing[0]}); predict on the images the template lists.")
    out = []
    for r in t_rows:
        pred = by_id[str(r[id_col]).strip()]
        out.append({**r, label_col: pred["label"] if not pred["error"] else ""})
    return list(t_rows[0].keys()), out
