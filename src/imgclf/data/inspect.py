"""`imgclf data inspect`: what a source holds, as a person checks it before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from imgclf.data.imageset import ImageData
from imgclf.data.skips import warnings_summary

SKIPS_SHOWN = 20


def describe(data: ImageData, audit=None, labels: dict | None = None) -> str:
    """A plain-text report: layout, classes with counts per split, sizes and modes, cache, skipped files,
    the audit's counts when one is given, and those of the last label check (label_review.read_summary)."""
    h, w = data.image_size
    splits = data.splits()
    name_w = max(5, *(len(c) for c in data.classes))
    head = f"  {'idx':>4}  {'class':<{name_w}}" + "".join(f"  {s:>7}" for s in splits)
    rows = [head]
    counts = {s: part.class_counts(data.num_classes) for s, part in splits.items()}
    for i, name in enumerate(data.classes):
        rows.append(f"  {i:>4}  {name:<{name_w}}" + "".join(f"  {counts[s][i]:>7}" for s in splits))
    rows.append(f"  {'':>4}  {'total':<{name_w}}" + "".join(f"  {len(part):>7}" for part in splits.values()))
    unlabeled = {s: int((p.labels < 0).sum()) for s, p in splits.items() if (p.labels < 0).any()}
    lines = [f"source:  {data.source}", f"layout:  {data.layout}", f"classes: {data.num_classes}", *rows]
    if unlabeled:
        lines.append("unlabeled: " + ", ".join(f"{s} {n}" for s, n in unlabeled.items()))
    sizes = ", ".join(f"{k} ({v})" for k, v in list(data.sizes_seen.items())[:8]) or f"{h}x{w} (all)"
    modes = ", ".join(f"{k} ({v})" for k, v in data.modes_seen.items()) or "uint8 arrays"
    lines += [f"images:  {data.channels} channel(s) x {h}x{w} uint8", f"sizes seen: {sizes}", f"modes seen: {modes}"]
    lines += [f"note:    {n}" for n in data.notes]
    stats = " ".join(f"{m:.4f}/{s:.4f}" for m, s in zip(data.mean, data.std))
    lines.append(f"normalisation (mean/std per channel, training split): {stats}")
    lines.append(f"horizontal flips in augmentation: {'on' if data.hflip else 'off (they change what the images mean)'}")
    if data.cache_dir is not None:
        lines.append(f"cache:   {data.cache_dir} ({'hit: nothing decoded' if data.cache_hit else 'built now'})")
    if data.submission_template:
        lines.append(f"submission template: {data.submission_template}")
    where = f", listed in {data.cache_dir / 'skipped.csv'}" if data.skipped and data.cache_dir else ""
    lines.append(f"skipped: {len(data.skipped)} file(s){where}")
    for s in data.skipped[:SKIPS_SHOWN]:
        lines.append(f"  {s.path}: {s.reason}")
    if len(data.skipped) > SKIPS_SHOWN:
        lines.append(f"  ... and {len(data.skipped) - SKIPS_SHOWN} more")
    if data.decode_warnings:
        lines.append(f"warnings: {warnings_summary(data.decode_warnings, cast(Path, data.cache_dir) / 'warnings.csv')}")
    if audit is not None:
        lines.append(f"audit ({audit.seconds:.1f} s; each finding: imgclf data audit {data.source}):")
        lines += [f"  {line}" for line in audit.summary_lines()]
    lines.append(_label_check_line(labels))
    return "\n".join(lines)


def _label_check_line(found: dict | None) -> str:
    """The counts of the last `imgclf data labels` on this source, or how to get them."""
    if found is None:
        return "label check: none at these settings (imgclf data labels SOURCE finds images filed under the wrong class)"
    noise = sorted(found.get("noise", {}).get("per_class", []), key=lambda c: -c["noise_rate"])[:3]
    worst = "; most noise: " + ", ".join(f"{c['class']} {c['noise_rate']:.1%}" for c in noise) if noise else ""
    return (
        f"label check: {found['suspects']:,} of {found['images']:,} training images ({found['share']:.1%}) look mislabeled"
        f"{worst} ({found['method']}; each in label_issues.csv beside it)"
    )


def save_grid(data: ImageData, path: str | Path, per_class: int = 8, max_classes: int = 20, seed: int = 0) -> Path:
    """A PNG of a few training images per class, one row per class labelled with its name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    classes = list(range(min(data.num_classes, max_classes)))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.1, len(classes) * 1.15), squeeze=False)
    for r, c in enumerate(classes):
        rows = np.flatnonzero(data.train.labels == c)
        pick: np.ndarray | list[int] = np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)) if len(rows) else []
        images: np.ndarray | list[np.ndarray] = data.train.take(cast(np.ndarray, pick)) if len(pick) else []  # non-empty: an array
        for k in range(per_class):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if k < len(images):
                im = images[k]
                ax.imshow(im[0] if im.shape[0] == 1 else im[:3].transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_ylabel(data.classes[c], rotation=0, ha="right", va="center", fontsize=9)
    title = f"{data.source}: {per_class} training images per class"
    if data.num_classes > max_classes:
        title += f" (first {max_classes} of {data.num_classes} classes)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
