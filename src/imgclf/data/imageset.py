"""What every source yields: uint8 N x C x H x W images, int64 labels, class names and origins."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.data.skips import Skipped
from imgclf.errors import DataError


@dataclass
class ImageSet:
    """One split: rows `index` of a shared (possibly memory-mapped) image array, with their labels."""

    images: np.ndarray  # the shared N_all x C x H x W uint8 array; splits are views through index
    index: np.ndarray  # int64 rows of images, in this split's order
    labels: np.ndarray  # int64, one per row of index; -1 where unlabeled
    all_origins: list[str]  # where each row of `images` came from (path, or dataset:split:number)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:  # the dataclass default prints every label and origin: megabytes in a notebook
        c, h, w = self.images.shape[1:]
        labeled = "labeled" if self.labeled else "unlabeled"
        return f"ImageSet({len(self)} {labeled} images of {c}x{h}x{w})"

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.images.shape[1:])

    @property
    def origins(self) -> list[str]:
        return [self.all_origins[i] for i in self.index]

    @property
    def labeled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Images at positions `rows` of this split, read in sorted order (kind to memory maps)."""
        rows = np.asarray(rows)
        src = self.index[rows]
        if len(src) and np.all(np.diff(src) == 1):  # a run of rows: one slice, copied out of the map
            return np.array(self.images[src[0] : src[-1] + 1])
        order = np.argsort(src, kind="stable")
        out = np.empty((len(src), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[src[order]]
        return out

    def array(self) -> np.ndarray:
        """The whole split as one in-memory array."""
        return self.take(np.arange(len(self.index)))

    def subset(self, rows: np.ndarray) -> ImageSet:
        rows = np.asarray(rows, dtype=np.int64)
        return ImageSet(self.images, self.index[rows], self.labels[rows], self.all_origins)

    def relabel(self, own_classes: list[str], target_classes: list[str], target: str) -> ImageSet:
        """The split with labels renumbered from own_classes to target_classes (matched by name).

        A labeled image of a class the target lacks is an error naming those classes; unlabeled stay -1.
        """
        if own_classes == target_classes:
            return self
        index = {c: i for i, c in enumerate(target_classes)}
        present = {own_classes[k] for k in np.unique(self.labels[self.labels >= 0])}
        unknown = sorted(present - set(index))
        if unknown:
            raise DataError(f"classes {unknown[:5]} are not among the {target} ({len(target_classes)} classes); they cannot be scored.")
        remap = np.array([index.get(c, -1) for c in own_classes], dtype=np.int64)
        labels = np.where(self.labels >= 0, remap[self.labels.clip(min=0)], -1)
        return ImageSet(self.images, self.index, labels, self.all_origins)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels[self.labels >= 0], minlength=num_classes)


@dataclass
class ImageData:
    """A dataset ready for training: splits, classes, normalisation and what loading it found."""

    source: str
    layout: str
    classes: list[str]
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    mean: tuple[float, ...]  # per channel, on the 0..1 scale, from the training split
    std: tuple[float, ...]
    hflip: bool  # whether a horizontal flip keeps an image's meaning (not for digits)
    notes: list[str] = field(default_factory=list)  # sentences for the log: size chosen, split fallbacks
    skipped: list[Skipped] = field(default_factory=list)
    cache_dir: Path | None = None
    cache_hit: bool | None = None
    sizes_seen: dict[str, int] = field(default_factory=dict)
    modes_seen: dict[str, int] = field(default_factory=dict)
    submission_template: str | None = None
    original_sizes: np.ndarray | None = None  # N_all x 2 (height, width of each file), rows as the image array's
    decode_warnings: dict[str, str] = field(default_factory=dict)  # path -> what the image libraries said
    val_from: str | None = None  # "train": a stratified share of the training images; "source": the data's own split

    def __repr__(self) -> str:
        h, w = self.image_size
        sizes = ", ".join(f"{name} {len(s)}" for name, s in self.splits().items())
        return f"ImageData({self.source!r}: {self.num_classes} classes, {sizes} images of {self.channels}x{h}x{w})"

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def splits(self) -> dict[str, ImageSet]:
        return {name: s for name, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None}

    def resized(
        self, size: tuple[int, int], resize: str, note: str, interpolation: str = "bilinear", crop_fraction: float = 1.0
    ) -> ImageData:
        """Every split brought to `size` in memory (as decoding would with that size asked for), the
        normalisation measured again; `note` replaces the one that said the size. For small images only:
        the result is an in-memory copy of all of them."""
        import dataclasses

        from imgclf.data.decode import fit_array

        done: dict[int, np.ndarray] = {}  # splits sharing one array share its resized copy

        def one(part: ImageSet | None) -> ImageSet | None:
            if part is None:
                return None
            if id(part.images) not in done:
                done[id(part.images)] = np.stack([fit_array(im, size, resize, interpolation, crop_fraction) for im in part.images])
            return ImageSet(done[id(part.images)], part.index, part.labels, part.all_origins)

        train = one(self.train)
        assert train is not None  # one() of a split that is there
        mean, std = channel_stats(train)
        notes = [note if n.startswith("image size") else n for n in self.notes]
        return dataclasses.replace(self, train=train, val=one(self.val), test=one(self.test), mean=mean, std=std, notes=notes)

    def summary(self) -> str:
        """A few lines a person reads first: what was found, how big, how it will be fed."""
        h, w = self.image_size
        sizes = ", ".join(f"{name} {len(s)}" for name, s in self.splits().items())
        lines = [f"{self.source}: {self.layout}; {self.num_classes} classes; {sizes} images of {self.channels}x{h}x{w}"]
        lines += self.notes
        if self.skipped:
            where = f"; reasons in {self.cache_dir / 'skipped.csv'}" if self.cache_dir else ""
            lines.append(f"skipped {len(self.skipped)} file(s){where}")
        return "\n".join(lines)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Train and validation positions with each class split in the same proportion, reproducibly.

    A class with a single image cannot be on both sides: it stays in training, and a note names it.
    """
    rng = np.random.default_rng(seed)
    train, val, lonely = [], [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = 0 if fraction <= 0 or len(rows) < 2 else min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        if fraction > 0 and len(rows) < 2:
            lonely.append(int(c))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    notes = []
    if lonely:
        names = ", ".join(classes[c] if classes else str(c) for c in lonely[:10]) + (", ..." if len(lonely) > 10 else "")
        notes.append(f"{len(lonely)} class(es) have a single image, kept in training with none in validation: {names}")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val)), notes


def channel_stats(images: ImageSet, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale, streamed in chunks so a memory map stays on disk."""
    c = images.images.shape[1]
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for a in range(0, len(images), chunk):
        x: np.ndarray = images.take(np.arange(a, min(len(images), a + chunk))).reshape(
            -1, c, images.images.shape[2] * images.images.shape[3]
        )
        x = x.transpose(1, 0, 2).reshape(c, -1).astype(np.float32)
        total += x.sum(axis=1, dtype=np.float64)
        sq += np.square(x).sum(axis=1, dtype=np.float64)
        n += x.shape[1]
    if n == 0:
        return tuple([0.5] * c), tuple([0.25] * c)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    std = np.where(std < 1e-3, 255.0, std)  # a constant channel: 1.0 on the 0..1 scale, not a blow-up
    return tuple(float(v / 255.0) for v in mean), tuple(float(v / 255.0) for v in std)
