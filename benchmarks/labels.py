"""Issue 24's benchmark: the label check against the truth, on Fashion-MNIST training images whose labels
were flipped on purpose.

1. Precision and recall of the suspects at the default threshold against the flips made, for 2%, 5% and
   10% symmetric noise (a flipped label is any other class, uniformly) and class-conditional noise among
   the look-alike tops (T-shirt/top, Pullover, Coat, Shirt: 20% of each flipped to another of the four),
   with the whole check's time (K-fold training included).
2. The same out-of-sample probabilities given to cleanlab's find_label_issues (AGPL, never a dependency of
   imgclf: installed only where this benchmark runs, and the row says so when it is not there), and to
   imgclf's own pruning by noise rate (--filter-by noise_rate: the same suspects as cleanlab's); how many of the false
   positives the check also suspects with Fashion-MNIST's own labels (its real label errors and look-alikes).
3. Retraining with 10% symmetric noise (training and validation images both noisy, the test set clean):
   the default on clean labels, on noisy labels, and on noisy labels with --drop-label-issues.
4. The real Fashion-MNIST (no flips): the top suspects as a grid PNG for the README.
Writes benchmarks/results/labels.{md,json} (and labels_top30.png).

    python benchmarks/labels.py            # everything on the 60,000 training images (about an hour here)
    python benchmarks/labels.py --quick    # 4,000 images, 5% symmetric noise only, no retraining (about a minute)
    python benchmarks/labels.py --retrain-only   # only the three retraining runs, into labels_retrain.md (about 10 minutes)
    python benchmarks/labels.py --retrain-drop-only   # only the 10%-noise retraining with --drop-label-issues
    python benchmarks/labels.py --no-retrain   # the cells and the real labels, no retraining (about 20 minutes)
    python benchmarks/labels.py --grid-from benchmarks/results/labels.json   # the grid PNG again, from the results
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

TOPS = (0, 2, 4, 6)  # T-shirt/top, Pullover, Coat, Shirt


def flipped(labels: np.ndarray, kind: str, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a share flipped, and the mask of flipped rows. symmetric: `rate` of all images, each to
    a uniformly chosen other class; tops: `rate` of each top class's images, to another top class."""
    rng = np.random.default_rng(seed)
    new = labels.copy()
    if kind == "symmetric":
        rows = rng.choice(len(labels), size=round(rate * len(labels)), replace=False)
        new[rows] = (labels[rows] + rng.integers(1, 10, size=len(rows))) % 10
    else:
        for c in TOPS:
            members = np.flatnonzero(labels == c)
            rows = rng.choice(members, size=round(rate * len(members)), replace=False)
            others = np.array([o for o in TOPS if o != c])
            new[rows] = others[rng.integers(0, len(others), size=len(rows))]
    return new, new != labels


def with_labels(data, part: str, labels: np.ndarray):
    from imgclf.data.imageset import ImageSet

    old = getattr(data, part)
    return dataclasses.replace(data, **{part: ImageSet(old.images, old.index, labels, old.all_origins)})


def precision_recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hits = int(truth[found].sum())
    return hits / max(len(found), 1), hits / max(int(truth.sum()), 1)


def cleanlab_suspects(labels: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    return np.asarray(find_label_issues(labels, probs, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence"))


def sweep(data, cells: list[tuple[str, float]], real: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """One row per noise cell; real: the suspects of the unflipped labels, to count how many false positives
    are pictures the check also doubts with Fashion-MNIST's own labels."""
    from imgclf.data.label_issues import find_label_issues
    from imgclf.label_review import review
    from imgclf.config import Config

    rows, reviews = [], {}
    clean = data.train.labels.copy()
    for kind, rate in cells:
        labels, truth = flipped(clean, kind, rate, seed=1)
        noisy = with_labels(data, "train", labels)
        start = time.perf_counter()
        found = review(noisy, Config().override(device="cpu"))
        seconds = time.perf_counter() - start
        p, r = precision_recall(found.issues.suspects, truth)
        row = {"noise": f"{kind} {rate:.0%}", "images": len(labels), "flipped": int(truth.sum()), "suspects": len(found.issues.suspects),
               "precision": round(p, 3), "recall": round(r, 3), "seconds": round(seconds, 1), "method": found.scored.method}
        if real is not None:
            false = np.setdiff1d(found.issues.suspects, np.flatnonzero(truth))
            row["false positives also suspects of the real labels"] = f"{np.isin(false, real).sum()} of {len(false)}"
        pruned = find_label_issues(labels, found.scored.probs, filter_by="noise_rate").suspects
        pp, pr = precision_recall(pruned, truth)
        row.update({"--filter-by noise_rate suspects": len(pruned), "noise_rate precision": round(pp, 3), "noise_rate recall": round(pr, 3)})
        theirs = cleanlab_suspects(labels, found.scored.probs)
        if theirs is None:
            row.update({"cleanlab suspects": "not installed", "cleanlab precision": "-", "cleanlab recall": "-"})
        else:
            cp, cr = precision_recall(theirs, truth)
            row.update({"cleanlab suspects": len(theirs), "cleanlab precision": round(cp, 3), "cleanlab recall": round(cr, 3)})
        print(row, flush=True)
        rows.append(row)
        reviews[(kind, rate)] = found
    return rows, reviews


def retrain(images: int | None, drop_only: bool = False) -> list[dict]:
    """Test accuracy (clean test set) of the default on clean labels, on 10% symmetric noise, and on that
    noise with --drop-label-issues (drop_only: that one alone)."""
    from imgclf import train
    from imgclf.data.sources import load_data

    data = load_data("fashion-mnist")
    if images:
        data = dataclasses.replace(data, train=data.train.subset(np.arange(min(images, len(data.train)))))
    noisy = data
    for part in ("train", "val"):
        labels, _ = flipped(getattr(data, part).labels, "symmetric", 0.10, seed={"train": 2, "val": 3}[part])
        noisy = with_labels(noisy, part, labels)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("clean labels", data, {}), ("10% flipped", noisy, {}), ("10% flipped, --drop-label-issues", noisy, {"drop_label_issues": True})]
        for name, source, extra in runs[2:] if drop_only else runs:
            start = time.perf_counter()
            run = train(source, device="cpu", out=tmp, name=name.replace(" ", "_").replace(",", "").replace("%", ""), **extra)
            assert run.test is not None
            out.append({"training labels": name, "test accuracy": round(100 * run.test["acc"], 2), "seconds": round(time.perf_counter() - start, 1)})
            print(out[-1], flush=True)
    return out


def top_grid(images: np.ndarray, rows: list[dict], path: Path) -> Path:
    """The top suspects of the real training labels as a grid PNG, from their rows (label_issues.csv's columns)."""
    from imgclf.report.plots import image_grid

    return image_grid(images, [r["given"] for r in rows], [r["suggested"] for r in rows], [r["confidence"] for r in rows], path,
                      "Fashion-MNIST's own labels: the top 30 suspects", names=("given", "suggested"))


def grid_from(results: Path, out: Path) -> Path:
    """labels_top30.png drawn again from a results file's table of the real suspects (no check run)."""
    import json

    from imgclf.data.sources import load_data

    rows = next(t for title, t in json.loads(results.read_text())["tables"].items() if title.startswith("Real"))
    data = load_data("fashion-mnist", val_fraction=0.0)
    index = [int(r["path"].rsplit(":", 1)[1]) for r in rows]
    return top_grid(data.train.take(np.array(index)), rows, out / "labels_top30.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4,000 images, 5%% symmetric noise, no retraining")
    parser.add_argument("--images", type=int, help="training images used (default: all 60,000; --quick: 4,000)")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="folder of the results (default: benchmarks/results)")
    parser.add_argument("--retrain-only", action="store_true", help="only the three retraining runs (labels_retrain.md)")
    parser.add_argument("--retrain-drop-only", action="store_true", help="only the retraining with --drop-label-issues (labels_retrain.md)")
    parser.add_argument("--no-retrain", action="store_true", help="leave out the retraining (the check's cells and the real labels only)")
    parser.add_argument("--grid-from", type=Path, metavar="LABELS.json", help="only draw labels_top30.png again from a results file")
    args = parser.parse_args()
    if args.grid_from:
        print(grid_from(args.grid_from, args.out))
        return
    if args.retrain_only or args.retrain_drop_only:
        rows = retrain(args.images, drop_only=args.retrain_drop_only)
        print(common.write("labels_retrain", rows, [], {"images": args.images or 60000}, folder=args.out).read_text())
        return
    from imgclf.data.sources import load_data
    from imgclf.logs import ensure_console

    ensure_console()
    images = args.images or (4000 if args.quick else None)
    data = load_data("fashion-mnist", val_fraction=0.0)
    if images:
        data = dataclasses.replace(data, train=data.train.subset(np.arange(images)))
    cells = [("symmetric", 0.05)] if args.quick else [("symmetric", 0.02), ("symmetric", 0.05), ("symmetric", 0.10), ("tops", 0.20)]
    summary, tables, real = [], {}, None
    if not args.quick:
        from imgclf.label_review import review
        from imgclf.config import Config

        real = review(data, Config().override(device="cpu"))
        grid = top_grid(real.images.take(real.issues.suspects[:30]), real.rows()[:30], args.out / "labels_top30.png")
        summary.append(f"the real training labels: {real.summary_line()}; the top 30 in {grid.name}")
        tables["Real Fashion-MNIST: the top 30 suspects"] = real.rows()[:30]
    rows, _ = sweep(data, cells, real.issues.suspects if real is not None else None)
    five = next(r for r in rows if r["noise"] == "symmetric 5%")
    summary.insert(0, f"5% symmetric noise: precision {five['precision']:.3f}, recall {five['recall']:.3f} in {five['seconds']:.0f} s "
                      f"for {five['images']:,} images (targets: both >= 0.8, <= 600 s for 60,000)")
    if not args.quick and not args.no_retrain:
        tables["Retraining with 10% symmetric noise (test set clean)"] = retrain(images)
    path = common.write("labels_quick" if args.quick else "labels", rows, summary, {"images": images or len(data.train)}, tables, folder=args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()
