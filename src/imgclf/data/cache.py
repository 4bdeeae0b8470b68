"""Decode once: every file of a dataset decoded in parallel into one memory-mapped uint8 array on disk.

The cache is keyed by the dataset's root and the requested size/channels (its folder) and by the file
list with sizes and mtimes (its fingerprint): an unchanged dataset loads without decoding anything, and a
changed, added or removed file rebuilds it. Files are written to a temporary folder that replaces the
old cache only when complete, so an interrupted build never leaves a half-written cache behind.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import DataConfig
from imgclf.data import decode
from imgclf.data.listing import FileListing
from imgclf.data.noise import merged
from imgclf.data.parallel import chunks, run_chunks, worker_count
from imgclf.data.skips import SkipLog, Skipped, read_skipped, read_warnings, write_skipped, write_warnings
from imgclf.errors import DataError

CACHE_VERSION = 2  # 2: per-file original sizes and the libraries' warnings
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MAX_AUTO_SIDE = 224  # auto-chosen sizes stop here: larger rarely pays for a CNN classifier from scratch


@dataclass
class Decoded:
    """A dataset's decoded images (memory-mapped), in listing order, with what the decoding saw."""

    images: np.ndarray  # N x C x H x W uint8
    labels: np.ndarray  # int64
    splits: np.ndarray  # int8 SPLIT_CODES
    origins: list[str]
    size_note: str
    cache_dir: Path
    hit: bool
    decode_skips: list[Skipped] = field(default_factory=list)
    sizes_seen: dict[str, int] = field(default_factory=dict)  # "HxW" -> count, most common first
    modes_seen: dict[str, int] = field(default_factory=dict)  # Pillow mode -> count
    original_sizes: np.ndarray | None = None  # N x 2 int32: each file's height and width before resizing
    warnings: dict[str, str] = field(default_factory=dict)  # path -> what the image libraries said


def cache_root(config: DataConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    if os.environ.get("IMGCLF_CACHE"):
        return Path(os.environ["IMGCLF_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("imgclf"))


def slug(name: str) -> str:
    """A source's name as the cache's folder and file names hold it."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "data"


def _key_dir(listing: FileListing, config: DataConfig) -> Path:
    request = [CACHE_VERSION, str(listing.root.resolve()), listing.layout, config.target_size(), config.channels, config.resize]
    if config.framing() != DataConfig().framing():  # keys of the default framing stay as they were before it could change
        request.append(config.framing())
    digest = hashlib.sha256(json.dumps(request).encode()).hexdigest()[:16]
    return cache_root(config) / "decoded" / f"{slug(listing.root.resolve().name)}-{digest}"


def _stat_text(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:  # a dangling link or a vanished file: decoding reports it; the key notes its state
        return "unreadable"
    return f"{st.st_size}\0{st.st_mtime_ns}"


def fingerprint(listing: FileListing) -> str:
    """Hash of every file's path, label, size and mtime (and of the CSVs), in listing order."""
    h = hashlib.sha256()
    for split, pairs in listing.files.items():
        for path, label in pairs:
            h.update(f"{split}\0{path}\0{label}\0{_stat_text(path)}\n".encode())
    for path in listing.extra_files:
        h.update(f"extra\0{path}\0{_stat_text(path)}\n".encode())
    h.update(json.dumps(listing.classes).encode())
    return h.hexdigest()


def choose_size(sides: list[tuple[int, int]], requested: tuple[int, int] | None) -> tuple[tuple[int, int], str]:
    """The target (H, W) and a sentence saying why; all-equal sizes are kept as they are."""
    if requested:
        return requested, f"image size {requested[0]}x{requested[1]} (requested)"
    distinct = collections.Counter(sides)
    if len(distinct) == 1:
        ((h, w),) = distinct
        return (h, w), f"image size {h}x{w} (all images share it)"
    short = statistics.median(min(hw) for hw in sides)
    side = int(max(8, min(MAX_AUTO_SIDE, round(short / 8) * 8)))
    lo, hi = min(sides, key=lambda s: s[0] * s[1]), max(sides, key=lambda s: s[0] * s[1])
    note = (
        f"image size {side}x{side} chosen: sizes vary from {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}, median short side "
        f"{short:g} px (capped at {MAX_AUTO_SIDE}); set --image-size to choose another"
    )
    return (side, side), note


def load_or_build(listing: FileListing, config: DataConfig, skips: SkipLog) -> Decoded:
    """The cached decode of listing if it is current, else a fresh one; decode skips go to skips."""
    key_dir = _key_dir(listing, config)
    stamp = fingerprint(listing)
    cached = _load(key_dir, stamp) or _load_decided(listing, config, stamp)
    if cached is None:
        cached = _build(listing, config, skips, key_dir, stamp)
    else:
        for s in cached.decode_skips:  # replayed so that --strict still stops at them on a cache hit
            skips.add(s.path, s.reason)
    write_skipped(skips.items, cached.cache_dir / "skipped.csv")
    return cached


def _load_decided(listing: FileListing, config: DataConfig, stamp: str) -> Decoded | None:
    """The cache built when size and channels were left to be decided, if it decided what config asks for:
    a run's config.yaml records the decided values, and resuming or evaluating it must not decode again."""
    if config.image_size is None and config.channels is None:
        return None
    auto = dataclasses.replace(config, image_size=None, channels=None)
    found = _load(_key_dir(listing, auto), stamp)
    if found is None:
        return None
    size, channels = tuple(found.images.shape[2:]), found.images.shape[1]
    if (config.target_size() or size) != size or (config.channels or channels) != channels:
        return None
    return found


def _load(key_dir: Path, stamp: str) -> Decoded | None:
    try:
        manifest = json.loads((key_dir / "manifest.json").read_text())
        if manifest.get("version") != CACHE_VERSION or manifest.get("fingerprint") != stamp:
            return None
        images = np.load(key_dir / "images.npy", mmap_mode="r")
        labels = np.load(key_dir / "labels.npy")
        splits = np.load(key_dir / "splits.npy")
        original_sizes = np.load(key_dir / "original_sizes.npy")
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # missing or damaged: rebuilt from the files
    decode_skips = read_skipped(key_dir / "decode_skipped.csv")
    return Decoded(
        images,
        labels,
        splits,
        manifest["origins"],
        manifest["size_note"],
        key_dir,
        True,
        decode_skips,
        manifest["sizes_seen"],
        manifest["modes_seen"],
        original_sizes,
        read_warnings(key_dir / "warnings.csv"),
    )


def _build(listing: FileListing, config: DataConfig, skips: SkipLog, key_dir: Path, stamp: str) -> Decoded:
    entries = [(path, label, SPLIT_CODES[split]) for split, pairs in listing.files.items() for path, label in pairs]
    workers = worker_count(config.workers)
    probes, noise = _probe_all([e[0] for e in entries], workers)
    decode_skips: list[Skipped] = []
    good = []
    for entry, info in zip(entries, probes):
        if isinstance(info, str):
            skips.add(entry[0], info)
            decode_skips.append(Skipped(entry[0], info))
        else:
            good.append((entry, info))
    if not good:
        raise DataError(
            f"{listing.root}: none of its {len(entries)} image files could be read; see the reasons with "
            f"'imgclf data inspect {listing.root}'."
        )
    key_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_dir.with_name(key_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    out_file = str(tmp / "images.npy")
    while True:
        channels = config.channels or (3 if any(info[2] for _, info in good) else 1)
        size, size_note = choose_size([info[:2] for _, info in good], config.target_size())
        good_paths = [e[0] for e, _ in good]
        failed = _decode_into_file(good_paths, out_file, channels, size, config, workers, noise)
        for row, reason in sorted(failed.items()):
            skips.add(good_paths[row], reason)
            decode_skips.append(Skipped(good_paths[row], reason))
        keep = [i for i in range(len(good)) if i not in failed]
        if not keep:
            raise DataError(
                f"{listing.root}: none of its {len(entries)} image files could be decoded; see the reasons with "
                f"'imgclf data inspect {listing.root}'."
            )
        remaining = [good[i] for i in keep]
        # A file whose header reads but whose pixels do not (truncated, corrupt) must not choose the size or
        # the channels of the others: when it swayed the automatic choice, the rest is decoded again.
        same_channels = config.channels or channels == (3 if any(info[2] for _, info in remaining) else 1)
        same_size = config.target_size() or size == choose_size([info[:2] for _, info in remaining], None)[0]
        if not failed or (same_channels and same_size):
            break
        good = remaining
    if failed:
        _compact(out_file, keep)
    kept = [good[i] for i in keep]
    bad = {s.path for s in decode_skips}  # their reasons already carry what the libraries said
    noise = {path: text for path, text in noise.items() if path not in bad}
    labels = np.array([e[1] for e, _ in kept], dtype=np.int64)
    splits = np.array([e[2] for e, _ in kept], dtype=np.int8)
    sizes_seen = dict(collections.Counter(f"{info[0]}x{info[1]}" for _, info in kept).most_common(20))
    modes_seen = dict(collections.Counter(info[3] for _, info in kept).most_common())
    original_sizes = np.array([info[:2] for _, info in kept], dtype=np.int32).reshape(-1, 2)
    np.save(tmp / "labels.npy", labels)
    np.save(tmp / "splits.npy", splits)
    np.save(tmp / "original_sizes.npy", original_sizes)
    write_skipped(decode_skips, tmp / "decode_skipped.csv")
    write_warnings(noise, tmp / "warnings.csv")
    manifest: dict[str, Any] = {
        "version": CACHE_VERSION,
        "fingerprint": stamp,
        "root": str(listing.root),
        "channels": channels,
        "size": list(size),
        "size_note": size_note,
        "origins": [e[0] for e, _ in kept],
        "sizes_seen": sizes_seen,
        "modes_seen": modes_seen,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    _replace_dir(tmp, key_dir)
    images = np.load(key_dir / "images.npy", mmap_mode="r")
    return Decoded(
        images, labels, splits, manifest["origins"], size_note, key_dir, False, decode_skips, sizes_seen, modes_seen, original_sizes, noise
    )


def _probe_all(paths: list[str], workers: int) -> tuple[list, dict[str, str]]:
    """Each file's header (height, width, colour, mode) or its reason, and what the libraries said."""
    probes, noise = [], {}
    for part, said in run_chunks(decode.probe_many, [(paths[a:b],) for a, b in chunks(len(paths), workers)], workers, "reading headers"):
        probes += part
        noise.update(said)
    return probes, noise


def _decode_into_file(
    paths: list[str], out_file: str, channels: int, size: tuple[int, int], config: DataConfig, workers: int, noise: dict[str, str]
) -> dict[int, str]:
    """Decode paths in parallel into a new .npy of their number of rows; returns row -> reason of each failure
    and adds what the libraries said to noise."""
    np.lib.format.open_memmap(out_file, mode="w+", dtype=np.uint8, shape=(len(paths), channels, *size)).flush()
    framing = config.framing()
    jobs = [
        (paths[a:b], a, out_file, channels, size, config.resize, framing["interpolation"], framing["crop_fraction"])
        for a, b in chunks(len(paths), workers)
    ]
    failed = {}
    for part, said in run_chunks(decode.decode_into, jobs, workers, "decoding images"):
        failed.update(part)
        for path, text in said.items():
            noise[path] = merged(noise.get(path), text)  # the header read may have said the same
    return failed


def _compact(out_file: str, keep: list[int]) -> None:
    """Drop the rows of files that failed to decode, streaming so a large cache never sits in RAM."""
    src = np.load(out_file, mmap_mode="r")
    dst_file = out_file + ".compact.npy"
    dst = np.lib.format.open_memmap(dst_file, mode="w+", dtype=np.uint8, shape=(len(keep), *src.shape[1:]))
    keep_arr = np.asarray(keep)
    for a in range(0, len(keep_arr), 4096):
        dst[a : a + 4096] = src[keep_arr[a : a + 4096]]
    dst.flush()
    del src, dst
    os.replace(dst_file, out_file)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap a complete cache folder in; if another process swapped one in meanwhile, either is good."""
    old = target.with_name(target.name + f".old-{os.getpid()}")
    try:
        if target.exists():
            os.replace(target, old)
        os.replace(new, target)
    except OSError:
        if not (target / "manifest.json").exists():
            raise
        shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
