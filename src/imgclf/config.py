"""The one home of every default. A CLI flag, a config field and a keyword argument share one name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from imgclf.errors import ImgclfError

RESIZE_MODES = ("crop", "pad")


@dataclass
class AugmentConfig:
    """Batched, on-device training augmentation; None means 'decide from the dataset'."""

    crop_padding: int | None = None  # pixels of zero padding for random crops; None: about 1/8 of the side
    hflip: bool | None = None  # None: on, except for digit sets where a flip changes the meaning
    translate: float = 0.0  # extra random shift, as a fraction of the side
    erasing: float = 0.0  # probability of random erasing per image


@dataclass
class DataConfig:
    """How a source becomes arrays: size, channels, split, bad-file policy, where caches live."""

    image_size: int | tuple[int, int] | None = None  # None: the dataset's own size, or one chosen from its sizes
    resize: str = "crop"  # keep aspect ratio, then centre-crop or pad to the target size
    channels: int | None = None  # None: 1 for all-gray data, 3 as soon as one image has colour
    val_fraction: float = 0.1
    seed: int = 0
    strict: bool = False  # first bad file is an error instead of being skipped
    data_root: str | None = None  # where built-in datasets are looked up first (also IMGCLF_DATA)
    cache_dir: str | None = None  # decoded-image caches (also IMGCLF_CACHE); default: the user cache dir
    workers: int | None = None  # decoding processes; None: all cores
    id_column: str | None = None  # CSV layout; None: the first of id, filename, file, image, path
    label_column: str | None = None  # CSV layout; None: the first of label, class, target
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        self.validate()

    def validate(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ImgclfError(f"resize={self.resize!r} is not one of {', '.join(RESIZE_MODES)}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ImgclfError(f"val_fraction={self.val_fraction} must be at least 0 and below 1 (0.1 keeps 10% aside).")
        if self.channels not in (None, 1, 3):
            raise ImgclfError(f"channels={self.channels} must be 1 (gray) or 3 (RGB), or left unset to detect it.")
        size = self.target_size()
        if size is not None and min(size) < 8:
            raise ImgclfError(f"image_size={self.image_size} is too small; use at least 8 pixels.")

    def target_size(self) -> tuple[int, int] | None:
        """The requested (height, width), or None when the size is to be detected."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        h, w = self.image_size
        return (int(h), int(w))


def to_dict(config: Any) -> dict:
    """A plain dict (YAML-ready) of a config dataclass, nested sections included."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict) -> Any:
    """Build a config dataclass from a dict, naming any unknown key instead of ignoring it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ImgclfError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return cls(**values)
