"""`imgclf data audit`: the check a careful practitioner runs before trusting a test score.

Does the test set leak into training (the same picture, or nearly, on both sides)? Do the labels agree
with themselves (the same picture under two labels)? Are the classes balanced, and are some images far
smaller than the size they are trained at, or oddly shaped? Everything comes from the decoded images
(the cache), so an audit takes seconds and never decodes a file again.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.data import duplicates
from imgclf.data.imageset import ImageData, ImageSet, channel_stats

TINY_FACTOR = 2.0  # enlarged more than this to reach the training size: little detail left to learn from
EXTREME_ASPECT = 3.0  # one side more than this times the other: a centre crop keeps under a third
IMBALANCE_WARN = 5.0  # most common over least common class in training
EXAMPLES = 8  # findings shown in the terminal; audit.csv has them all
COLUMNS = ["kind", "split_a", "path_a", "label_a", "split_b", "path_b", "label_b", "distance", "note"]


@dataclass
class Finding:
    """One row of audit.csv: image a (and b, for pairs; b is the one kept first) and what is wrong."""

    kind: str  # exact duplicate, label conflict, near duplicate, tiny image, extreme aspect ratio, class imbalance
    split_a: str = ""
    path_a: str = ""
    label_a: str = ""
    split_b: str = ""
    path_b: str = ""
    label_b: str = ""
    distance: float | None = None  # near duplicates: RMS difference in gray levels
    note: str = ""


@dataclass
class Audit:
    """Every finding of an audit, with the counts a person reads first."""

    source: str
    images: dict[str, int]  # split -> number of images
    image_shape: tuple[int, int, int]
    findings: list[Finding] = field(default_factory=list)
    balance: dict = field(default_factory=dict)
    near_threshold: float | None = None  # None: near duplicates were not searched
    seconds: float = 0.0

    def count(self, kind: str, splits: str | None = None) -> int:
        """Findings of a kind; splits='train-test' counts pairs between those two splits only."""
        return sum(
            f.kind == kind and (splits is None or "-".join(sorted((f.split_b, f.split_a), key=_split_order)) == splits)
            for f in self.findings
        )

    def counts(self) -> dict:
        names = list(self.images)
        pairs = [f"{a}-{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
        return {
            "exact_within": {s: self.count("exact duplicate", f"{s}-{s}") for s in names},
            "exact_across": {p: self.count("exact duplicate", p) for p in pairs},
            "label_conflicts": self.count("label conflict"),
            "near_across": {p: self.count("near duplicate", p) for p in pairs} if self.near_threshold is not None else None,
            "tiny": self.count("tiny image"),
            "extreme_aspect": self.count("extreme aspect ratio"),
        }

    def summary_lines(self) -> list[str]:
        c, b = self.counts(), self.balance
        per = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "none"  # noqa: E731
        lines = [f"exact duplicates within a split (identical pixels, same label): {per(c['exact_within'])}"]
        if c["exact_across"]:
            lines.append(f"exact duplicates across splits (a leak: the same picture on both sides): {per(c['exact_across'])}")
        lines.append(f"label conflicts (identical pixels, different labels): {c['label_conflicts']}")
        if c["near_across"] is not None and c["near_across"]:
            lines.append(
                f"near duplicates across splits (RMS difference at most {self.near_threshold:g} gray levels after a shift of "
                f"up to 1 px and a brightness/contrast match, at {duplicates.SIDE}x{duplicates.SIDE}): {per(c['near_across'])}"
            )
        if b:
            lines.append(
                f"class balance (train): {b['smallest']} to {b['largest']} images per class, ratio {b['ratio']:g}"
                + (f"; {b['warning']}" if b.get("warning") else "")
            )
        lines.append(f"tiny images (enlarged more than {TINY_FACTOR:g}x to the training size): {c['tiny']}")
        lines.append(f"extreme aspect ratios (one side over {EXTREME_ASPECT:g}x the other): {c['extreme_aspect']}")
        return lines

    def table(self) -> str:
        """What the terminal shows: the counts, then a few findings."""
        c, h, w = self.image_shape
        sizes = ", ".join(f"{k} {v}" for k, v in self.images.items())
        lines = [f"audit of {self.source}: {sizes} images of {c}x{h}x{w} ({self.seconds:.1f} s)"]
        lines += [f"  {line}" for line in self.summary_lines()]
        pairs = [f for f in self.findings if f.path_b]
        if pairs:
            lines.append("examples (an image = the earlier image it repeats):")
            for f in pairs[:EXAMPLES]:
                dist = f" (distance {f.distance:g})" if f.distance is not None else ""
                lines.append(
                    f"  {f.kind}{dist}: {f.path_a} [{f.split_a}, {f.label_a or '?'}] = {f.path_b} [{f.split_b}, {f.label_b or '?'}]"
                )
            if len(pairs) > EXAMPLES:
                lines.append(f"  ... and {len(pairs) - EXAMPLES} more")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "images": self.images,
            "image_shape": list(self.image_shape),
            "near_threshold": self.near_threshold,
            "seconds": round(self.seconds, 2),
            "counts": self.counts(),
            "balance": self.balance,
            "findings": [dataclasses.asdict(f) for f in self.findings],
        }

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(dataclasses.asdict(x) for x in self.findings)
        return path

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path


def csv_path(data: ImageData, cache_root: Path) -> Path:
    """Where audit.csv goes by default: beside skipped.csv in the decode cache, or for sources without a
    cache (built-in datasets, arrays) under the cache root."""
    if data.cache_dir is not None:
        return Path(data.cache_dir) / "audit.csv"
    from imgclf.data.cache import slug

    return cache_root / "audits" / f"{slug(Path(data.source).name)}-audit.csv"


def _split_order(name: str) -> int:
    return {"train": 0, "val": 1, "test": 2}.get(name, 3)


def _label(data: ImageData, labels: np.ndarray, pos: int | np.integer) -> str:
    return data.classes[labels[pos]] if labels[pos] >= 0 else ""


def audit(data: ImageData, near: bool = True) -> Audit:
    """Audit a dataset; near=False leaves out the near-duplicate search (the exact checks take well under
    a second on 70,000 small images)."""
    start = time.perf_counter()
    splits = data.splits()
    result = Audit(data.source, {s: len(p) for s, p in splits.items()}, (data.channels, *data.image_size))
    origins = {s: p.origins for s, p in splits.items()}
    groups = duplicates.exact_groups(splits)
    result.findings += _exact_findings(data, splits, origins, groups)
    if near:
        result.near_threshold = duplicates.NEAR_THRESHOLD
        result.findings += _near_findings(data, splits, origins, groups)
    result.balance = _balance(data)
    if result.balance.get("warning"):
        result.findings.append(Finding("class imbalance", "train", note=result.balance["warning"]))
    result.findings += _size_findings(data, splits, origins)
    order = ["label conflict", "exact duplicate", "near duplicate", "class imbalance", "tiny image", "extreme aspect ratio"]
    result.findings.sort(key=lambda f: (order.index(f.kind), f.distance or 0.0))  # the surest problems first
    result.seconds = time.perf_counter() - start
    return result


def _exact_findings(data: ImageData, splits: dict[str, ImageSet], origins: dict, groups) -> list[Finding]:
    out = []
    for group in groups:
        (ks, kp), rest = group[0], group[1:]
        kept_label = _label(data, splits[ks].labels, kp)
        for s, p in rest:
            label = _label(data, splits[s].labels, p)
            kind = "label conflict" if label and kept_label and label != kept_label else "exact duplicate"
            out.append(Finding(kind, s, origins[s][p], label, ks, origins[ks][kp], kept_label, 0.0))
    return out


def _near_findings(data: ImageData, splits: dict[str, ImageSet], origins: dict, groups) -> list[Finding]:
    """For each image of a later split, its closest near duplicate in each earlier split (not an exact copy)."""
    names = list(splits)
    described = {s: duplicates.describe(splits[s], shifted=s != names[0]) for s in names}
    exact = {(a, pa, b, pb) for g in groups for a, pa in g for b, pb in g}
    out = []
    for i, base in enumerate(names):
        for query in names[i + 1 :]:
            skip = {(pq, pb) for (a, pq, b, pb) in exact if a == query and b == base}
            for pq, pb, dist in duplicates.near_pairs(described[query], described[base], skip):
                la, lb = _label(data, splits[query].labels, pq), _label(data, splits[base].labels, pb)
                out.append(
                    Finding(
                        "near duplicate",
                        query,
                        origins[query][pq],
                        la,
                        base,
                        origins[base][pb],
                        lb,
                        dist,
                        "labels differ" if la and lb and la != lb else "",
                    )
                )
    return out


def _balance(data: ImageData) -> dict:
    counts = data.train.class_counts(data.num_classes)
    present = counts[counts > 0]
    if not len(present):
        return {}
    ratio = round(float(present.max() / present.min()), 2)
    out = {
        "counts": {c: int(n) for c, n in zip(data.classes, counts)},
        "smallest": int(present.min()),
        "largest": int(present.max()),
        "ratio": ratio,
    }
    if ratio >= IMBALANCE_WARN:
        rare = [data.classes[i] for i in np.argsort(counts, kind="stable") if counts[i] > 0][:3]
        out["warning"] = (
            f"imbalanced: {', '.join(rare)} have the fewest images; collect or oversample more of them, and judge "
            f"the model by macro-averaged F1 in report.html rather than by accuracy"
        )
    return out


def _size_findings(data: ImageData, splits: dict[str, ImageSet], origins: dict) -> list[Finding]:
    """Images far smaller than the training size, and extreme aspect ratios, from each file's own size."""
    if data.original_sizes is None:
        return []
    th, tw = data.image_size
    out = []
    for s, part in splits.items():
        if part.images is not data.train.images:  # a separate --val/--test source: its files' sizes are not recorded here
            continue
        sizes = data.original_sizes[part.index]
        h, w = sizes[:, 0].astype(float), sizes[:, 1].astype(float)
        grow = np.maximum(th / h, tw / w)
        aspect = np.maximum(h / w, w / h)
        for pos in np.flatnonzero(grow > TINY_FACTOR):
            out.append(
                Finding(
                    "tiny image",
                    s,
                    origins[s][pos],
                    _label(data, part.labels, pos),
                    note=f"{int(h[pos])}x{int(w[pos])} enlarged {grow[pos]:.1f}x to {th}x{tw}",
                )
            )
        for pos in np.flatnonzero(aspect > EXTREME_ASPECT):
            out.append(
                Finding(
                    "extreme aspect ratio",
                    s,
                    origins[s][pos],
                    _label(data, part.labels, pos),
                    note=f"{int(h[pos])}x{int(w[pos])} (aspect {aspect[pos]:.1f}); resized to {th}x{tw}",
                )
            )
    return out


def drop_duplicates(data: ImageData, groups=None) -> tuple[ImageData, str, list[dict]]:
    """The data without exact repeats in training: a repeat under the same label keeps its first copy; a
    picture under two labels in training keeps none (neither label can be trusted, as with conflicting
    CSV rows); a training copy of a validation or test image goes. Returns the data, a sentence for the
    log, and one row per dropped image (path, label, reason) for dedupe.csv."""
    splits = data.splits()
    groups = duplicates.exact_groups(splits) if groups is None else groups
    origins, labels = data.train.origins, data.train.labels
    dropped: dict[int, str] = {}
    for group in groups:
        train_rows = [p for s, p in group if s == "train"]
        held_out = [(s, p) for s, p in group if s != "train"]
        names = {_label(data, splits[s].labels, p) for s, p in group} - {""}
        if held_out:
            s, p = held_out[0]
            dropped.update({r: f"identical to {s} image {splits[s].origins[p]}" for r in train_rows})
        elif len(names) > 1:
            dropped.update({r: f"the same picture has the labels {', '.join(sorted(names))} in training" for r in train_rows})
        else:
            dropped.update({r: f"repeats {origins[train_rows[0]]}" for r in train_rows[1:]})
    if not dropped:
        return data, "dedupe: no exact duplicates in training, nor training copies of validation/test images", []
    kinds = {
        "repeat": sum(r.startswith("repeats") for r in dropped.values()),
        "conflict": sum(r.startswith("the same picture") for r in dropped.values()),
        "leak": sum(r.startswith("identical") for r in dropped.values()),
    }
    keep = np.array([i for i in range(len(data.train)) if i not in dropped], dtype=np.int64)
    train = data.train.subset(keep)
    mean, std = channel_stats(train)
    note = (
        f"dedupe: dropped {len(dropped)} training image(s): {kinds['repeat']} repeating an earlier training image, "
        f"{kinds['conflict']} under conflicting labels (every copy), {kinds['leak']} identical to a validation/test image; "
        f"{len(keep)} left"
    )
    rows = [{"path": origins[r], "label": _label(data, labels, r), "reason": reason} for r, reason in sorted(dropped.items())]
    return dataclasses.replace(data, train=train, mean=mean, std=std, notes=[*data.notes, note]), note, rows


def dropped_csv(rows: list[dict]) -> str:
    """dedupe.csv's text: each training image --dedupe dropped, with its label and why."""
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["path", "label", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def leak_line(data: ImageData, groups) -> str | None:
    """One sentence for the training log when validation/test images also appear in training, else None."""
    splits = data.splits()
    leaked, relabelled = set(), set()
    for group in groups:
        train_labels = {_label(data, splits[s].labels, p) for s, p in group if s == "train"}
        if not train_labels:
            continue
        for s, p in group:
            if s != "train":
                leaked.add((s, p))
                label = _label(data, splits[s].labels, p)
                if label and label not in train_labels:
                    relabelled.add((s, p))
    if not leaked:
        return None
    other = f" ({len(relabelled)} of them under another label there)" if relabelled else ""
    return (
        f"leak: {len(leaked)} validation/test image(s) are exact copies of training images{other}, so their scores "
        f"are not to be trusted; train with --dedupe to drop the training copies, and see 'imgclf data audit' for near duplicates"
    )
