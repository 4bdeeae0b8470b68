"""Issue 11's benchmark: the default `imgclf train` on small data beside the tutorial recipe.

1. A grid on Fashion-MNIST: training sets of 500, 1,000, 2,000 and 5,000 images x 2 and 5 epochs, mean
   over seeds, scored on 2,000 test images. imgclf's default (everything left to it; it holds 10% of
   the images out for validation) against seed 003's recipe on all the images (common.tutorial_fit).
2. The layouts users brought, as the issue measured them before the fix: 3,600 PNGs in class folders
   with a test folder, 2 epochs; the CSV layout with 3,000 images, 3 epochs; a 64 px colour class tree of
   2,000 images, 3 epochs. Through the CLI, as a user runs it, beside the tutorial on the same images.
Writes benchmarks/results/small_data.{md,json}.

    python benchmarks/small_data.py [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from data_pipeline import _idx  # noqa: E402

TEST_IMAGES = 2000


def fashion_mnist():
    x = _idx(common.fashion_mnist_file("train-images-idx3-ubyte"))[:, None]
    y = _idx(common.fashion_mnist_file("train-labels-idx1-ubyte")).astype(np.int64)
    xt = _idx(common.fashion_mnist_file("t10k-images-idx3-ubyte"))[:TEST_IMAGES, None]
    yt = _idx(common.fashion_mnist_file("t10k-labels-idx1-ubyte"))[:TEST_IMAGES].astype(np.int64)
    return x, y, xt, yt


def imgclf_default(x, y, xt, yt, epochs: int, seed: int, out: str) -> tuple[float, dict]:
    """imgclf.train with nothing but the epochs (and the seed of its split and shuffling)."""
    import imgclf

    run = imgclf.train((x, y), epochs=epochs, seed=seed, device="cpu", out=out, test=(xt, yt))
    return run.test["acc"], run.history[0]


def grid(x, y, xt, yt, sizes, epochs_list, seeds, out) -> list[dict]:
    rows = []
    for n in sizes:
        for epochs in epochs_list:
            ours, tut, first = [], [], []
            for seed in seeds:
                pick = np.random.default_rng(seed).permutation(len(x))[:n]
                acc, epoch1 = imgclf_default(x[pick], y[pick], xt, yt, epochs, seed, out)
                ours.append(acc)
                first.append(epoch1["train_loss"])
                tut.append(common.tutorial_accuracy(common.tutorial_fit(x[pick], y[pick], epochs, seed), xt, yt))
            row = {"images": n, "epochs": epochs, "imgclf test acc % (mean)": 100 * np.mean(ours),
                   "tutorial test acc % (mean)": 100 * np.mean(tut), "difference (points)": 100 * (np.mean(ours) - np.mean(tut)),
                   "imgclf runs": " ".join(f"{100 * a:.1f}" for a in ours), "tutorial runs": " ".join(f"{100 * a:.1f}" for a in tut),
                   "imgclf epoch-1 train loss": float(np.mean(first))}
            print(row, flush=True)
            rows.append(row)
    return rows


def _write_tree(root: Path, images: np.ndarray, labels: np.ndarray, ext: str = "png") -> None:
    from PIL import Image

    for i, (im, lab) in enumerate(zip(images, labels)):
        folder = root / f"class{lab}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.transpose(1, 2, 0).squeeze(-1) if im.shape[0] == 1 else im.transpose(1, 2, 0)).save(folder / f"{i:05d}.{ext}")


def _write_csv_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The CSV layout: <split>.csv of id,label beside <split>/<id>.png."""
    from PIL import Image

    (root / split).mkdir(parents=True)
    with open(root / f"{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        for i, (im, lab) in enumerate(zip(images, labels)):
            Image.fromarray(im[0]).save(root / split / f"{i}.png")
            w.writerow([i, int(lab)])


def _colour_64(images: np.ndarray, seed: int) -> np.ndarray:
    """Fashion-MNIST as 64 px colour photos: enlarged, and each item tinted with a random colour."""
    import torch
    import torch.nn.functional as F

    x = F.interpolate(torch.tensor(images, dtype=torch.float32), size=(64, 64), mode="bilinear", align_corners=False)
    tint = torch.tensor(np.random.default_rng(seed).uniform(0.3, 1.0, (len(images), 3, 1, 1)), dtype=torch.float32)
    return (x * tint).clamp(0, 255).round().to(torch.uint8).numpy()


def _cli(*args) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "imgclf", "train", *args, "--device", "cpu"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    run_dir = Path(proc.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    return json.loads((run_dir / "results.json").read_text()), time.perf_counter() - start


def layouts(x, y, xt, yt, work: Path) -> list[dict]:
    """The three layouts of the issue, trained through the CLI with default settings."""
    rows = []
    # 3,600 PNGs in class folders (train/), 500 in test/, 2 epochs.
    tree = work / "fmnist-3600"
    _write_tree(tree / "train", x[:3600], y[:3600])
    _write_tree(tree / "test", xt[:500], yt[:500])
    results, seconds = _cli(str(tree), "--epochs", "2", "--out", str(work / "runs"))
    tut = common.tutorial_accuracy(common.tutorial_fit(x[:3600], y[:3600], 2), xt[:500], yt[:500])
    rows.append({"layout": "3,600 Fashion-MNIST PNGs in class folders + test/ of 500, --epochs 2",
                 "imgclf test acc %": 100 * results["test_acc"], "tutorial test acc %": 100 * tut, "imgclf wall s": seconds})
    # The CSV layout: train.csv of 3,000 ids and labels beside train/; test/ of 500 with labels in test.csv.
    apparel = work / "apparel"
    _write_csv_split(apparel, "train", x[10000:13000], y[10000:13000])
    _write_csv_split(apparel, "test", xt[500:1000], yt[500:1000])
    results, seconds = _cli(str(apparel), "--epochs", "3", "--out", str(work / "runs"))
    tut = common.tutorial_accuracy(common.tutorial_fit(x[10000:13000], y[10000:13000], 3), xt[500:1000], yt[500:1000])
    rows.append({"layout": "CSV layout (train.csv + train/), 3,000 images, test.csv + test/ of 500, --epochs 3",
                 "imgclf test acc %": 100 * results["test_acc"], "tutorial test acc %": 100 * tut, "imgclf wall s": seconds})
    # A 64 px colour class tree of 2,000 images, test/ of 500, 3 epochs.
    colour, colour_test = _colour_64(x[20000:22000], 1), _colour_64(xt[1000:1500], 2)
    tree = work / "colour64"
    _write_tree(tree / "train", colour, y[20000:22000], "jpg")
    _write_tree(tree / "test", colour_test, yt[1000:1500], "jpg")
    results, seconds = _cli(str(tree), "--epochs", "3", "--out", str(work / "runs"))
    from imgclf import load_data

    data = load_data(tree, val_fraction=0)  # the JPEGs as imgclf decodes them, for the tutorial too
    tut = common.tutorial_accuracy(common.tutorial_fit(data.train.array(), data.train.labels, 3), data.test.array(), data.test.labels)
    rows.append({"layout": "64 px colour class tree (JPEG), 2,000 images + test/ of 500, --epochs 3",
                 "imgclf test acc %": 100 * results["test_acc"], "tutorial test acc %": 100 * tut, "imgclf wall s": seconds})
    for row in rows:
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one seed, two cells, no layouts: a smoke test")
    args = parser.parse_args()
    import logging

    import torch

    torch.set_num_threads(2)
    logging.getLogger("imgclf").setLevel(logging.WARNING)
    x, y, xt, yt = fashion_mnist()
    seeds = list(range(1 if args.quick else args.seeds))
    sizes, epochs = ([500], [2, 5]) if args.quick else ([500, 1000, 2000, 5000], [2, 5])
    with tempfile.TemporaryDirectory() as work:
        rows = grid(x, y, xt, yt, sizes, epochs, seeds, str(Path(work) / "runs"))
        layout_rows = [] if args.quick else layouts(x, y, xt, yt, Path(work))
    behind = [r for r in rows if r["difference (points)"] < 0]
    summary = [f"Fashion-MNIST subsets, {TEST_IMAGES} test images, mean over {len(seeds)} seed(s); imgclf holds 10% of each "
               "training set out for validation, the tutorial trains on all of it.",
               f"imgclf's default ahead of the tutorial in {len(rows) - len(behind)} of {len(rows)} cells "
               f"(smallest margin {min(r['difference (points)'] for r in rows):+.1f} points); target: never behind: "
               + ("met" if not behind else "NOT met")]
    summary += [f"{r['layout']}: imgclf {r['imgclf test acc %']:.1f}% vs tutorial {r['tutorial test acc %']:.1f}%" for r in layout_rows]
    tables = {"The layouts of the issue, through the CLI with default settings": layout_rows} if layout_rows else None
    path = common.write("small_data", rows, summary, {"seeds": seeds, "test_images": TEST_IMAGES}, tables=tables)
    print(path.read_text())


if __name__ == "__main__":
    main()
