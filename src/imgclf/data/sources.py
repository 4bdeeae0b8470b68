"""One entry point for every source: a folder tree, a CSV layout, a built-in name, or arrays."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from pathlib import Path

import numpy as np

from imgclf.config import DataConfig, from_dict, to_dict
from imgclf.data import arrays, builtin, cache, listing
from imgclf.data.decode import fit_array
from imgclf.data.imageset import ImageData, ImageSet, channel_stats, stratified_split
from imgclf.data.skips import SkipLog, warnings_summary
from imgclf.errors import DataError

log = logging.getLogger("imgclf")


def make_config(config: DataConfig | None = None, **overrides) -> DataConfig:
    """config (or the defaults) with keyword overrides applied and validated."""
    return from_dict(DataConfig, {**to_dict(config or DataConfig()), **overrides})


def load_data(
    source, config: DataConfig | None = None, *, labels=None, classes: list[str] | None = None, layout: str | None = None, **overrides
) -> ImageData:
    """Load any source as ImageData: a path, a built-in dataset name, (images, labels), or images with labels=.

    Keyword overrides are DataConfig fields (image_size=64, strict=True, ...).
    """
    config = make_config(config, **overrides)
    if isinstance(source, tuple) and len(source) == 2:
        source, labels = source
    if not isinstance(source, (str, Path)):
        if labels is None:
            raise DataError("images given as an array need their labels: load_data((images, labels)) or labels=...")
        return _from_arrays(source, labels, classes, layout, config)
    kind = check_source(source)
    # Absolute (links kept): the file list, and so the cache, must not depend on how the folder was spelt.
    path = Path(os.path.abspath(Path(str(source)).expanduser()))
    if kind == "builtin":
        return _from_builtin(str(source).lower(), config)
    return _from_files(path, config) if kind == "folder" else _from_files(path.parent, config, train_csv=path)


def with_separate_split(data: ImageData, what: str, source, config: DataConfig) -> ImageData:
    """data with its validation or test split taken from a separate source (a path, a name, or arrays),
    brought to the training data's size, channels and classes: how training attaches --val and --test,
    and how evaluate rebuilds what a run scored."""
    extra = load_data(source, dataclasses.replace(config, image_size=data.image_size, channels=data.channels, val_fraction=0.0))
    where = f"--{what} {source}" if isinstance(source, (str, Path)) else f"{what}= arrays"
    part = extra.train.relabel(extra.classes, data.classes, f"training classes ({where})")
    return dataclasses.replace(data, val=part) if what == "val" else dataclasses.replace(data, test=part)


def source_id(source) -> str | None:
    """How a run records its source: a built-in's name, an existing path made absolute (so that the run
    can be evaluated or resumed from any folder), None for in-memory data."""
    kind = check_source(source)
    if kind == "arrays":
        return None
    return str(source).lower() if kind == "builtin" else str(Path(str(source)).expanduser().resolve())


def dataset_root(source) -> str | None:
    """The dataset a source names, for telling whether two sources are one: a CSV of ids stands for the
    folder it is in (its images and splits are found from there), a path for itself."""
    try:
        ident = source_id(source)
    except DataError:  # a source that is gone is still a name to compare
        return str(source)
    if ident is None or not Path(ident).is_absolute():
        return ident
    path = Path(ident)
    return str(path.parent) if path.suffix.lower() == ".csv" and path.is_file() else ident


def check_source(source) -> str:
    """What a source is ('folder', 'csv', 'builtin' or 'arrays') without reading an image of it; a
    one-line error naming the fix when it can be nothing, with the built-in name meant for a near miss."""
    if not isinstance(source, (str, Path)):
        return "arrays"
    text = str(source)
    path = Path(text).expanduser()
    if builtin.is_builtin(text) and not path.exists():
        return "builtin"
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if path.is_file():
        raise DataError(f"{text} is a file, not a dataset; pass the folder that holds the class folders (or a CSV of ids and labels).")
    close = difflib.get_close_matches(text.lower().replace("_", "-").replace(" ", "-"), builtin.BUILTINS, n=1, cutoff=0.7)
    if close:
        raise DataError(f"{text}: no such folder or CSV file; did you mean the built-in dataset '{close[0]}'?")
    names = ", ".join(builtin.BUILTINS)
    raise DataError(f"{text}: no such folder or CSV file, and not a built-in dataset ({names}); check the path.")


def _from_files(root: Path, config: DataConfig, train_csv: Path | None = None) -> ImageData:
    skips = SkipLog(config.strict)
    if train_csv or listing.find_csv(root, "train"):
        found = listing.list_csv(root, skips, config.id_column, config.label_column, train_csv)
    else:
        found = listing.list_folders(root, skips)
    decoded = cache.load_or_build(found, config, skips)
    log.info("cache %s: %s", "hit" if decoded.hit else "built", decoded.cache_dir)
    if skips.items:
        log.warning("%s; each file and reason in %s", skips.summary(), decoded.cache_dir / "skipped.csv")
    if decoded.warnings:
        log.info(warnings_summary(decoded.warnings, decoded.cache_dir / "warnings.csv"))
        for path, text in decoded.warnings.items():
            log.debug("  %s: %s", path, text)
    parts = {name: np.flatnonzero(decoded.splits == code) for name, code in cache.SPLIT_CODES.items()}
    sets = {name: ImageSet(decoded.images, rows, decoded.labels[rows], decoded.origins) for name, rows in parts.items() if len(rows)}
    if "train" not in sets:
        raise DataError(f"{root}: no training image could be read; see {decoded.cache_dir / 'skipped.csv'} for the reasons.")
    data = _assemble(str(root), found.layout, found.classes, sets, config, hflip=True, notes=[decoded.size_note])
    data.skipped, data.cache_dir, data.cache_hit = list(skips.items), decoded.cache_dir, decoded.hit
    data.sizes_seen, data.modes_seen = decoded.sizes_seen, decoded.modes_seen
    data.original_sizes, data.decode_warnings = decoded.original_sizes, decoded.warnings
    data.submission_template = found.submission_template
    return data


def conform_arrays(images: np.ndarray, config: DataConfig) -> tuple[np.ndarray, str]:
    """Arrays brought to the requested channels and size, as files are when decoded."""
    c = images.shape[1]
    if config.channels and config.channels != c:
        if c == 1:
            images = np.repeat(images, 3, axis=1)
        elif c == 3:
            luma = np.array([299, 587, 114], dtype=np.uint32)  # ITU-R 601-2, as Pillow's convert('L')
            images = ((images.astype(np.uint32) * luma[None, :, None, None]).sum(axis=1, keepdims=True) // 1000).astype(np.uint8)
        else:
            raise DataError(f"cannot convert {c}-channel images to channels={config.channels}; leave channels unset.")
    size = config.target_size()
    h, w = images.shape[2:]
    if size and (size != (h, w) or config.framing()["crop_fraction"] != 1.0):
        images = np.stack([fit_array(im, size, config.resize, **config.framing()) for im in images])
        return images, f"image size {size[0]}x{size[1]} (requested; resized from {h}x{w})"
    return images, f"image size {h}x{w} (the images' own)" if not size else f"image size {h}x{w} (requested)"


def _from_arrays(images, labels, classes, layout, config: DataConfig) -> ImageData:
    x, found_layout = arrays.to_nchw_uint8(images, layout)
    y, names = arrays.labels_and_classes(labels, classes)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; give one label per image.")
    x, note = conform_arrays(x, config)
    origins = [f"array:{i}" for i in range(len(x))]
    train = ImageSet(x, np.arange(len(x)), y, origins)
    how = "given" if layout else "detected"
    return _assemble("arrays", f"in-memory arrays ({found_layout}, {how})", names, {"train": train}, config, hflip=True, notes=[note])


def _from_builtin(name: str, config: DataConfig) -> ImageData:
    raw = builtin.load_builtin(name, config)
    sets, note = {}, ""
    for split, pair in (("train", raw.train), ("test", raw.test)):
        if pair is None:
            continue
        x, note = conform_arrays(pair[0], config)
        sets[split] = ImageSet(x, np.arange(len(x)), pair[1], [f"{name}:{split}:{i}" for i in range(len(x))])
    return _assemble(
        name, f"built-in dataset from {raw.location}", raw.classes, sets, config, hflip=builtin.BUILTINS[name].hflip, notes=[note]
    )


def _assemble(
    source: str, layout: str, classes: list[str], sets: dict[str, ImageSet], config: DataConfig, hflip: bool, notes: list[str]
) -> ImageData:
    """Split off validation when no split provides it, and measure normalisation on training data."""
    train, notes = sets["train"], [n for n in notes if n]
    val = sets.get("val")
    if val is None and config.val_fraction > 0:
        tr_rows, val_rows, split_notes = stratified_split(train.labels, config.val_fraction, config.seed, classes)
        train, val = train.subset(tr_rows), train.subset(val_rows)
        notes += split_notes
        notes.append(f"validation: {len(val)} images, a stratified {config.val_fraction:.0%} of training (seed {config.seed})")
    mean, std = channel_stats(train)
    val = val if val is not None and len(val) else None
    val_from = None if val is None else ("source" if "val" in sets else "train")
    return ImageData(source, layout, classes, train, val, sets.get("test"), mean, std, hflip, notes, val_from=val_from)
