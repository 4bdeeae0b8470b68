"""Issue 10's benchmark: the data audit on all 70,000 Fashion-MNIST images, and the measurement behind
its near-duplicate threshold.

1. Speed: `audit` (exact + near duplicates across splits) on the built-in arrays and on the same images
   as a train/ test/ PNG tree loaded from a warm cache; the sources take turns within each round.
2. Threshold: the distance (RMS gray levels after the best 1-px shift and brightness/contrast match) of
   re-encoded, shifted and brightened copies of 2,000 training images to their originals, beside each
   of those 2,000 images' closest other image; and the rank of each copy's original among all 60,000
   training images by the candidate descriptor (the search keeps the 64 closest).
3. Findings on the real Fashion-MNIST train and test sets.
Writes benchmarks/results/audit.{md,json}.

    python benchmarks/audit.py [--rounds 3] [--tree DIR]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from data_pipeline import _idx  # noqa: E402

DISTINCT = 2000


def build_split_tree(root: Path) -> Path:
    """Fashion-MNIST as root/train/<class>/*.png and root/test/<class>/*.png, written once and reused."""
    from PIL import Image

    marker = root / ".complete"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = _idx(common.fashion_mnist_file(f"{stem}-images-idx3-ubyte"))
        labels = _idx(common.fashion_mnist_file(f"{stem}-labels-idx1-ubyte"))
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
        for i, (im, lab) in enumerate(zip(images, labels)):
            Image.fromarray(im, "L").save(root / split / f"class{lab}" / f"{i:05d}.png")
    marker.touch()
    return root


def _variants(originals: np.ndarray, rng) -> dict[str, np.ndarray]:
    from PIL import Image

    def jpeg(a, quality):
        out = []
        for im in a:
            buf = io.BytesIO()
            Image.fromarray(im[0]).save(buf, "JPEG", quality=quality)
            out.append(np.asarray(Image.open(buf))[None])
        return np.stack(out)

    def shift(im, dy, dx):
        out = np.zeros_like(im)
        h, w = im.shape[1:]
        out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = im[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out

    shifted = np.stack([shift(im, *rng.integers(-1, 2, 2)) for im in originals])
    return {"re-encoded JPEG, quality 75": jpeg(originals, 75), "re-encoded JPEG, quality 50": jpeg(originals, 50),
            "shifted up to 1 px": shifted, "shifted up to 1 px, then JPEG 75": jpeg(shifted, 75),
            "brightness x1.1": np.clip(originals * 1.1, 0, 255).astype(np.uint8),
            "brightness x0.8": (originals * 0.8).astype(np.uint8),
            "brightness -10 levels": np.clip(originals.astype(int) - 10, 0, 255).astype(np.uint8),
            "shifted up to 1 px, brightness x1.1": np.clip(shifted * 1.1, 0, 255).astype(np.uint8)}


def threshold_rows() -> tuple[list[dict], float]:
    """Distances and candidate ranks of copies vs distinct images; returns the rows and the distinct minimum."""
    import torch

    from imgclf.data import duplicates as dup
    from imgclf.data.imageset import ImageSet

    def as_set(a):
        return ImageSet(a, np.arange(len(a)), np.zeros(len(a), np.int64), [""] * len(a))

    train = _idx(common.fashion_mnist_file("train-images-idx3-ubyte"))[:, None].copy()
    originals = train[:DISTINCT]
    base = dup.describe(as_set(train), shifted=False)
    own, own_spread = (t[:DISTINCT] for t in base.unshifted())

    def distances(described):  # each query to each of the first DISTINCT training images, best shift
        cos = torch.einsum("nve,me->nvm", described.central, own)
        scale = torch.maximum(described.spread[:, :, None], own_spread[None, None, :])
        return (scale * (1 - cos.clamp(-1, 1) ** 2).clamp_min(0).sqrt()).amin(1)

    d = distances(dup.describe(as_set(originals), shifted=True))
    d.fill_diagonal_(float("inf"))
    closest = d.amin(1).numpy()
    def spread(d):
        return {"min": float(d.min()), "p0.1": float(np.percentile(d, 0.1)), "median": float(np.median(d)),
                "p99.9": float(np.percentile(d, 99.9)), "max": float(d.max())}

    rows = [{"images": f"{DISTINCT} distinct training images, each to the closest other", "rank of original p99 / max": "",
             **spread(closest), "duplicates at the threshold": f"{(closest <= dup.NEAR_THRESHOLD).sum()} of {DISTINCT}"}]
    for name, copies in _variants(originals, np.random.default_rng(0)).items():
        described = dup.describe(as_set(copies), shifted=True)
        scores = described.spectrum @ base.spectrum.T
        rank = (scores > scores[torch.arange(DISTINCT), torch.arange(DISTINCT)][:, None]).sum(1).numpy()
        to_original = distances(described)[torch.arange(DISTINCT), torch.arange(DISTINCT)].numpy()
        found = ((to_original <= dup.NEAR_THRESHOLD) & (rank < dup.CANDIDATES)).sum()
        rows.append({"images": f"copies: {name}", "rank of original p99 / max": f"{np.percentile(rank, 99):.0f} / {rank.max()}",
                     **spread(to_original), "duplicates at the threshold": f"{found} of {DISTINCT}"})
    return rows, float(closest.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "imgclf-bench-fmnist-splits")
    args = parser.parse_args()

    import torch

    from imgclf import load_data
    from imgclf.data.audit import audit
    from imgclf.data.duplicates import NEAR_THRESHOLD

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    root = build_split_tree(args.tree)
    print(f"tree ready in {time.perf_counter() - t0:.1f}s: {root}", flush=True)
    cache = tempfile.mkdtemp(prefix="imgclf-bench-audit-")
    load_data(root, cache_dir=cache, val_fraction=0)  # the cold decode, not timed
    sources = {"built-in arrays (fashion-mnist)": lambda: load_data("fashion-mnist", val_fraction=0),
               "PNG tree, warm cache": lambda: load_data(root, cache_dir=cache, val_fraction=0)}
    loaded = {name: load() for name, load in sources.items()}
    assert loaded["PNG tree, warm cache"].cache_hit
    timings = common.interleaved({**{f"audit: {n}": (lambda d=d: audit(d)) for n, d in loaded.items()},
                                  "load from the warm cache (PNG tree)": sources["PNG tree, warm cache"],
                                  "audit --exact-only: built-in arrays": lambda: audit(loaded["built-in arrays (fashion-mnist)"], near=False)},
                                 args.rounds)
    shutil.rmtree(cache, ignore_errors=True)
    rows = [{"what": what, "median s": common.median(secs), "runs (s)": " ".join(f"{s:.2f}" for s in secs)} for what, secs in timings.items()]
    print(rows, flush=True)
    result = audit(loaded["built-in arrays (fashion-mnist)"])
    counts = result.counts()
    tree = audit(loaded["PNG tree, warm cache"]).counts()
    threshold, distinct_min = threshold_rows()
    worst = max(common.median(v) for k, v in timings.items() if k.startswith("audit: "))
    summary = [
        f"70,000 Fashion-MNIST images (train 60,000, test 10,000), 2 torch threads. Slower of the two full audits: "
        f"{worst:.1f} s median (target < 30 s): " + ("met" if worst < 30 else "NOT met"),
        f"Findings on Fashion-MNIST: exact duplicates within train {counts['exact_within']['train']}, within test "
        f"{counts['exact_within']['test']}, between train and test {counts['exact_across']['train-test']}; label conflicts "
        f"{counts['label_conflicts']}; near duplicates between train and test {counts['near_across']['train-test']} "
        f"(test images with a near copy in train, threshold {NEAR_THRESHOLD:g}). The PNG tree gives the same counts: "
        + ("yes" if tree == counts else f"NO ({tree})"),
        f"Threshold {NEAR_THRESHOLD:g} gray levels: every copy kind stays below it; the closest pair of the {DISTINCT} distinct "
        f"images is {distinct_min:.2f} apart.",
    ]
    path = common.write("audit", rows, summary, {"images": 70000, "near_threshold": NEAR_THRESHOLD},
                        tables={"Near-duplicate threshold (distances in RMS gray levels)": threshold})
    print(path.read_text())


if __name__ == "__main__":
    main()
