"""The label check: out-of-sample probabilities for every labeled training image, by K folds of a fast
model, and the images whose given label they contradict (data/label_issues.py), with what a person needs
to judge each one.

Why the tool trains the folds itself: confident learning needs each image scored by a model that never
saw it, and that cross-validation is the costly part users are left with elsewhere (cleanlab's tracker:
"takes days" on 87k images). With pretrained weights the folds are linear heads on features embedded once
(seconds); without, the default network with a short recipe, its epochs capped so that the folds train on
at most WORK_CAP images in all (Fashion-MNIST's 60,000 in a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgclf.config import Config, parse_duration
from imgclf.data.imageset import ImageData, ImageSet
from imgclf.data.label_issues import FOLDS, RANKINGS, LabelIssues, find_label_issues
from imgclf.errors import DataError, ImgclfError

log = logging.getLogger("imgclf")
WORK_CAP = 1_000_000  # image passes of all folds together for the network (8 epochs a fold on Fashion-MNIST)
MIN_EPOCHS = 3  # a fold trained for fewer scores too low for its doubts to mean much
NEIGHBOURS = 3  # per suspect and class, on the gallery
SHOWN = 20  # suspects in the terminal table
COLUMNS = ["rank", "path", "given", "suggested", "confidence", "given_confidence"]
SUMMARY_NAME = "label_issues.json"  # in the decode cache, where `data inspect` finds the counts


@dataclass
class OutOfSample:
    """Each image's probabilities from the fold that did not train on it, and the features that fold saw
    it with (for nearest neighbours: compare only within one `space`)."""

    probs: np.ndarray  # N x K
    features: np.ndarray  # N x F, float32
    space: np.ndarray  # N: which fold's features (the probe's single space: all 0)
    method: str  # one line: the folds, the model, the recipe
    seconds: float


@dataclass
class LabelReview:
    """What the label check found on a source's training images, ready to show, write and act on."""

    source: str
    classes: list[str]
    images: ImageSet  # the training images checked (thumbnails)
    scored: OutOfSample
    issues: LabelIssues
    rank_by: str
    folder: Path | None = None  # where its files go unless told (default_dir)
    neighbours: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # suspect rank -> rows of given, suggested

    @property
    def paths(self) -> list[str]:
        return self.images.origins

    def rows(self) -> list[dict]:
        """One row per suspect, most suspect first: the columns of label_issues.csv."""
        labels, probs, origins = self.images.labels, self.scored.probs, self.images.all_origins
        return [
            {
                "rank": r + 1,
                "path": origins[self.images.index[i]],
                "given": self.classes[labels[i]],
                "suggested": self.classes[s],
                "confidence": round(float(probs[i, s]), 4),
                "given_confidence": round(float(probs[i, labels[i]]), 4),
            }
            for r, (i, s) in enumerate(zip(self.issues.suspects, self.issues.suggested))
        ]

    def noise(self) -> dict:
        """Per class, the estimated share of its images that belong elsewhere, and the pairs most often mixed up."""
        joint, counts = self.issues.joint, np.bincount(self.images.labels, minlength=len(self.classes))
        rates = self.issues.noise_rates
        pairs = [
            {"given": self.classes[i], "likely": self.classes[j], "share_of_given": round(float(joint[i, j] / joint[i].sum()), 4)}
            for i, j in zip(*np.nonzero(joint * (1 - np.eye(len(self.classes)))))
            if joint[i].sum() > 0
        ]
        pairs.sort(key=lambda p: -p["share_of_given"])
        return {
            "per_class": [
                {"class": c, "images": int(counts[k]), "noise_rate": round(float(rates[k]), 4)} for k, c in enumerate(self.classes)
            ],
            "most_confused": pairs[:10],
            "joint": [[round(float(v), 5) for v in row] for row in joint],
        }

    def to_json(self) -> dict:
        n = len(self.images)
        return {
            "source": self.source,
            "images": n,
            "suspects": len(self.issues.suspects),
            "share": round(len(self.issues.suspects) / max(n, 1), 5),
            "method": self.scored.method,
            "seconds": round(self.scored.seconds, 1),
            "rank_by": self.rank_by,
            "classes": self.classes,
            "thresholds": [round(float(t), 4) for t in self.issues.thresholds],
            "noise": self.noise(),
            "rows": self.rows(),
        }

    def summary_line(self) -> str:
        n, found = len(self.images), len(self.issues.suspects)
        return f"{found:,} of {n:,} training images ({found / max(n, 1):.1%}) look mislabeled ({self.scored.method})"

    def table(self, top: int = SHOWN) -> str:
        """What the terminal shows: the method, the count, the top suspects, the noise per class and pair."""
        rows = self.rows()
        lines = [f"label check of {self.source}: {self.summary_line()}, {_clock(self.scored.seconds)}"]
        if rows:
            name_w = max(5, *(len(c) for c in self.classes))
            lines.append(f"  {'rank':>5}  {'given':<{name_w}}  {'suggested':<{name_w}}  {'p(sugg.)':>8}  {'p(given)':>8}  path")
            for r in rows[:top]:
                lines.append(
                    f"  {r['rank']:>5}  {r['given']:<{name_w}}  {r['suggested']:<{name_w}}  {r['confidence']:>8.3f}  "
                    f"{r['given_confidence']:>8.3f}  {r['path']}"
                )
            if len(rows) > top:
                lines.append(f"  ... and {len(rows) - top:,} more")
        noise = self.noise()
        worst = sorted(noise["per_class"], key=lambda c: -c["noise_rate"])[:5]
        lines.append("estimated share filed under the wrong class: " + ", ".join(f"{c['class']} {c['noise_rate']:.1%}" for c in worst))
        if noise["most_confused"]:
            lines.append(
                "most confused (given -> likely, share of the given class): "
                + ", ".join(f"{p['given']} -> {p['likely']} {p['share_of_given']:.1%}" for p in noise["most_confused"][:5])
            )
        return "\n".join(lines)

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.csv_text(), encoding="utf-8")
        return path

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    def find_neighbours(self, top: int) -> None:
        """For the first `top` suspects: the nearest training images (cosine, in the features of the fold
        that scored the suspect) labeled with its given class and with its suggested class."""
        feats = self.scored.features / np.maximum(np.linalg.norm(self.scored.features, axis=1, keepdims=True), 1e-12)
        labels, space = self.images.labels, self.scored.space
        for rank, (i, s) in enumerate(zip(self.issues.suspects[:top], self.issues.suggested[:top])):
            same = space == space[i]
            sim = feats @ feats[i]
            sim[i] = -np.inf
            pick = []
            for c in (labels[i], s):
                rows = np.flatnonzero(same & (labels == c))
                pick.append(rows[np.argsort(-sim[rows], kind="stable")[:NEIGHBOURS]])
            self.neighbours[rank] = (pick[0], pick[1])


def _clock(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, every class dealt out in turn so that each fold holds its share of each class."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = (np.arange(len(rows)) + int(rng.integers(folds))) % folds
    return fold


def check_checkable(data: ImageData, folds: int) -> None:
    """One line for each reason the training images cannot be checked, before any training."""
    train, where = data.train, data.source
    if folds < 2:
        raise DataError(f"--folds {folds}: the label check needs at least 2 folds (each image scored by a model that did not see it).")
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
    return _network_folds(data, config, fold, folds, seconds)


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
        return TimeBudget(seconds / folds).plan(trainer), f"to fit --time {_clock(seconds)}"
    recipe_epochs = int(_fold_config(config, first, None).train.epochs or 1)
    cap = max(MIN_EPOCHS, math.floor(WORK_CAP / (folds * len(first.train))))
    if cap < recipe_epochs:
        return cap, f"the recipe's {recipe_epochs} capped to about {WORK_CAP:,} images trained on in all"
    return recipe_epochs, "the recipe's"


def _network_folds(data: ImageData, config: Config, fold: np.ndarray, folds: int, seconds: float | None) -> OutOfSample:
    from imgclf.engine.bundle import unwrap
    from imgclf.engine.trainer import Trainer

    start = time.perf_counter()
    epochs, why = _fold_epochs(config, data, fold, folds, seconds)
    n, k = len(data.train), data.num_classes
    probs, feats, name = np.zeros((n, k), np.float32), None, "?"
    for f in range(folds):
        part = _fold_data(data, np.flatnonzero(fold != f))
        cfg = _fold_config(config, part, epochs)
        began = time.perf_counter()
        trainer = Trainer(part, cfg, Path("label-check-fold"))  # no callbacks write files: nothing is kept
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
            _clock(time.perf_counter() - began),
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


def review(data: ImageData, config: Config, *, folds: int = FOLDS, seconds: float | None = None, rank_by: str = RANKINGS[0]) -> LabelReview:
    """The label check of data's training split (already loaded and resolved as training would)."""
    if rank_by not in RANKINGS:
        raise DataError(f"--rank-by {rank_by}: choose one of {', '.join(RANKINGS)}.")
    scored = out_of_sample(data, config, folds, seconds)
    issues = find_label_issues(data.train.labels, scored.probs, rank_by)
    return LabelReview(data.source, data.classes, data.train, scored, issues, rank_by)


def check_labels(
    data=None,
    config: Config | None = None,
    *,
    folds: int = FOLDS,
    rank_by: str = RANKINGS[0],
    **settings,
) -> LabelReview:
    """`imgclf data labels`: load a source as training would (every training image, none held out for
    validation), score each image out of sample, and find the labels the scores contradict. Settings are
    training's (pretrained=, weights=, model=, epochs=, time=, image_size=, relabel=, drop=, ...): the folds
    train as it would; time= bounds the folds' training."""
    from imgclf.api import load_plan_data
    from imgclf.data.cache import cache_root
    from imgclf.logs import ensure_console
    from imgclf.preflight import plan_run

    ensure_console()
    settings = {k: v for k, v in settings.items() if k not in ("name", "force", "drop_label_issues")}
    settings.setdefault("val_fraction", 0.0)
    plan = plan_run(data, config, None, settings)
    budget = plan.config.train.time
    loaded = load_plan_data(plan)
    found = review(loaded, plan.config, folds=folds, seconds=parse_duration(budget) if budget else None, rank_by=rank_by)
    found.folder = default_dir(loaded.source, loaded.cache_dir, cache_root(plan.config.data))
    return found


def default_dir(data_source: str, cache_dir: Path | None, cache_root: Path) -> Path:
    """Where the check's files go unless told: beside skipped.csv in the decode cache (where `data inspect`
    looks for them), or under the cache root for sources without one (built-in datasets, arrays)."""
    if cache_dir is not None:
        return Path(cache_dir)
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(data_source).name)[:40] or "data"
    return cache_root / "label-checks" / slug


def read_summary(folder: Path | None) -> dict | None:
    """The counts of the last label check written to `folder`, or None."""
    if folder is None or not (Path(folder) / SUMMARY_NAME).is_file():
        return None
    try:
        found = json.loads((Path(folder) / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "suspects" in found else None
