"""Out-of-sample probabilities for every labeled training image, by K folds of a fast model: each image
scored by a model that never saw it (what confident learning needs, imgclf/label_review.py).

Why the tool trains the folds itself: that cross-validation is the costly part users are left with
elsewhere (cleanlab's tracker: "takes days" on 87k images). With pretrained weights the folds are linear
heads on features embedded once (seconds); without, the default network with the default recipe, its
epochs capped so that the folds train on at most WORK_CAP images in all (Fashion-MNIST's 60,000: 8 epochs
a fold, under 6 minutes on a 2-core CPU; 4 epochs scored 3 points lower precision, benchmarks/labels.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgclf.config import Config
from imgclf.data.imageset import ImageData, ImageSet
from imgclf.data.label_issues import FOLDS
from imgclf.errors import DataError, ImgclfError

log = logging.getLogger("imgclf")
WORK_CAP = 1_000_000  # image passes of all folds together for the network (8 epochs a fold on Fashion-MNIST)
MIN_EPOCHS = 3  # a fold trained for fewer scores too low for its doubts to mean much
# The folds' training time unless told: 1,224 clip-art pictures at 216 px took 13 minutes a fold at the
# recipe's 30 epochs on a busy 2-core CPU; Fashion-MNIST's 8 epochs a fold fit well within it.
DEFAULT_SECONDS = 600.0


@dataclass
class OutOfSample:
    """Each image's probabilities from the fold that did not train on it, and the features that fold saw
    it with (for nearest neighbours: compare only within one `space`)."""

    probs: np.ndarray  # N x K
    features: np.ndarray  # N x F, float32
    space: np.ndarray  # N: which fold's features (the probe's single space: all 0)
    method: str  # one line: the folds, the model, the recipe
    seconds: float


def clock(seconds: float) -> str:
    """A duration as the label check says it: seconds, or minutes from two of them."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, every class dealt out in turn so that each fold holds its share of each class."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = (np.arange(len(rows)) + int(rng.integers(folds))) % folds
    return fold


def check_folds(folds: int) -> None:
    """Before any image is read: a check needs two models at least."""
    if folds < 2:
        raise DataError(f"--folds {folds}: the label check needs at least 2 folds (each image scored by a model that did not see it).")


def check_checkable(data: ImageData, folds: int) -> None:
    """One line for each reason the training images cannot be checked, before any training."""
    train, where = data.train, data.source
    check_folds(folds)
    if len(train) == 0 or not train.labeled:
        raise DataError(f"{where}: the training images have no labels to check; give a class-per-folder tree or a CSV of id,label.")
    counts = np.bincount(train.labels, minlength=data.num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise DataError(f"{where}: all {len(train)} training images are of one class; a label check needs two classes or more.")
    if len(train) < folds:
        raise DataError(
            f"{where}: {len(train)} training images are fewer than the {folds} folds; use --folds {max(2, len(train))} or add images."
        )
    single = [data.classes[c] for c in present if counts[c] < 2]
    if single:
        names = ", ".join(single[:5]) + (", ..." if len(single) > 5 else "")
        raise DataError(
            f"{where}: {len(single)} class(es) have a single image ({names}); held out, it has no other image of its "
            "class to be learned from: add images of those classes or remove them."
        )


def out_of_sample(data: ImageData, config: Config, folds: int = FOLDS, seconds: float | None = None) -> OutOfSample:
    """Every training image's probabilities from the fold that did not train on it: a linear probe on the
    pretrained features when config has weights, else the default network with a short recipe."""
    check_checkable(data, folds)
    fold = stratified_folds(data.train.labels, folds, config.data.seed)
    t = config.train
    if t.pretrained or t.weights:
        return _probe_folds(data, config, fold, folds)
    threads = torch.get_num_threads()  # the folds follow the free cores; the caller gets its own count back
    try:
        return _network_folds(data, config, fold, folds, seconds)
    finally:
        if torch.get_num_threads() != threads:  # only where a run changed it: torchrun's ranks never do
            torch.set_num_threads(threads)


def _fold_data(data: ImageData, rows: np.ndarray) -> ImageData:
    return dataclasses.replace(data, train=data.train.subset(rows), val=None, test=None, notes=[])


def _fold_config(config: Config, data: ImageData, epochs: int | None) -> Config:
    from imgclf.engine import recipe

    t = dataclasses.replace(config.train, epochs=epochs, time=None, keep="last", test=None, val=None)
    return recipe.resolve(dataclasses.replace(config, train=t), data)[0]


def _fold_epochs(config: Config, data: ImageData, fold: np.ndarray, folds: int, seconds: float | None) -> tuple[int, str]:
    """The epochs every fold trains for, and why: as given, to fit the time budget (measured on the first
    fold), or the recipe's, capped so that all folds together train on at most WORK_CAP images."""
    from imgclf.engine.budget import TimeBudget
    from imgclf.engine.trainer import Trainer

    first = _fold_data(data, np.flatnonzero(fold != 0))
    if config.train.epochs is not None:
        return config.train.epochs, "as given"
    if seconds is not None:
        trainer = Trainer(first, _fold_config(config, first, None), Path("label-check-trial"))
        return TimeBudget(seconds / folds).plan(trainer), f"to fit --time {clock(seconds)}"
    recipe_epochs = int(_fold_config(config, first, None).train.epochs or 1)
    cap = max(MIN_EPOCHS, math.floor(WORK_CAP / (folds * len(first.train))))
    epochs, why = (
        (cap, f"the recipe's {recipe_epochs} capped to about {WORK_CAP:,} images trained on in all")
        if cap < recipe_epochs
        else (
            recipe_epochs,
            "the recipe's",
        )
    )
    # Large photos cost many times a small image's step: the cap in images is also held to a time.
    trainer = Trainer(first, _fold_config(config, first, epochs), Path("label-check-trial"))
    fit = TimeBudget(DEFAULT_SECONDS / folds).plan(trainer)
    if fit < epochs:
        return max(1, fit), f"the recipe's {recipe_epochs} cut to fit about {clock(DEFAULT_SECONDS)} here; --epochs or --time sets it"
    return epochs, why


def _network_folds(data: ImageData, config: Config, fold: np.ndarray, folds: int, seconds: float | None) -> OutOfSample:
    from imgclf.engine.bundle import unwrap
    from imgclf.engine.callbacks import FollowFreeCores
    from imgclf.engine.trainer import Trainer

    start = time.perf_counter()
    follow = FollowFreeCores.on_cpu(config, "the label check")  # before the folds' epochs are planned from a measured step
    epochs, why = _fold_epochs(config, data, fold, folds, seconds)
    n, k = len(data.train), data.num_classes
    probs, feats, name = np.zeros((n, k), np.float32), None, "?"
    for f in range(folds):
        part = _fold_data(data, np.flatnonzero(fold != f))
        cfg = _fold_config(config, part, epochs)
        began = time.perf_counter()
        trainer = Trainer(part, cfg, Path("label-check-fold"), callbacks=follow)  # no callback writes files: nothing is kept
        name = trainer.arch.name
        trainer.fit()
        held = np.flatnonzero(fold == f)
        p, z = _score(unwrap(trainer.scored_model), data.train.subset(held), trainer)
        probs[held] = p
        if feats is None:
            feats = np.zeros((n, z.shape[1]), np.float32)
        feats[held] = z
        acc = float((p.argmax(1) == data.train.labels[held]).mean())
        log.info(
            "label check, fold %d of %d: trained on %s images for %d epoch%s, %s held out agree with %.1f%% of their labels (%s)",
            f + 1,
            folds,
            f"{len(part.train):,}",
            epochs,
            "" if epochs == 1 else "s",
            f"{len(held):,}",
            100 * acc,
            clock(time.perf_counter() - began),
        )
    assert feats is not None  # folds >= 2
    method = f"{folds} folds of {name}, {epochs} epoch{'s' if epochs != 1 else ''} each ({why})"
    return OutOfSample(probs, feats, fold, method, time.perf_counter() - start)


@torch.no_grad()
def _score(model: torch.nn.Module, images: ImageSet, trainer) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and pooled features of held-out images, in one pass of the fold's network. No mirrored
    views: a fold trained without flips (the short recipe) scores mirrored sneakers as something else."""
    from imgclf.data.loader import DeviceLoader
    from imgclf.engine import hardware
    from imgclf.models.features import can_embed

    pre = trainer.preprocessing
    loader = DeviceLoader(
        images, trainer.eval_batch, mean=pre.mean, std=pre.std, device=trainer.device, channels_last=trainer.channels_last
    )
    model.eval()
    embeds = can_embed(model)
    probs, feats = [], []
    for x, _ in loader:
        with hardware.autocast(trainer.device, trainer.dtype):
            fmap = model.forward_features(x) if embeds else None  # type: ignore[operator]
            logits = model.forward_head(fmap) if embeds else model(x)  # type: ignore[operator]
            z = model.forward_head(fmap, pre_logits=True) if embeds else logits  # type: ignore[operator]
        probs.append(logits.float().softmax(1).cpu().numpy())
        feats.append(z.float().cpu().numpy())
    return np.concatenate(probs), np.concatenate(feats)


def _probe_folds(data: ImageData, config: Config, fold: np.ndarray, folds: int) -> OutOfSample:
    from imgclf.data.cache import cache_root
    from imgclf.engine import hardware, recipe
    from imgclf.engine.network import build_network
    from imgclf.engine.probe import fit_linear
    from imgclf.models.features import can_embed, features

    start = time.perf_counter()
    resolved = recipe.resolve(config, data)[0]
    model, arch = build_network(resolved, data)
    if not can_embed(model):
        raise ImgclfError(f"{arch.name} cannot give its features to a linear probe; choose a timm architecture with --model.")
    device = hardware.pick_device(resolved.train.device)
    model = model.to(device)
    got = features(model, {"train": data.train}, data.mean, data.std, device, cache_root(config.data))
    x, y = got.parts["train"], data.train.labels
    probs = np.zeros((len(y), data.num_classes), np.float32)
    for f in range(folds):
        train, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        head = fit_linear(x[train], y[train], data.num_classes)
        logits = torch.from_numpy(x[held]) @ head.weight.T + head.bias
        probs[held] = logits.softmax(1).numpy()
    where = "read from the cache" if got.cached else f"embedded in {got.seconds:.0f} s"
    method = f"{folds} folds of a linear probe on {arch.name}'s pretrained features ({where})"
    return OutOfSample(probs, x.astype(np.float32), np.zeros(len(y), np.int64), method, time.perf_counter() - start)
