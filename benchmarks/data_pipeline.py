"""Issue 2's benchmark: imgclf's data pipeline beside the tutorials' on the Fashion-MNIST PNG tree.

Measures, one after another on the same machine: imgclf's first load (parallel decode into the cache),
a cached load, and epochs of its on-device loader with augmentation; beside the tutorial pipeline
(per-image PIL decode in a torch Dataset, torchvision transforms, DataLoader with 0 and 2 workers).
Writes benchmarks/results/data_pipeline.{md,json}.

    python benchmarks/data_pipeline.py [--images 60000] [--tree DIR]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

BATCH = 256


def _idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build_tree(root: Path, n: int) -> Path:
    """The Fashion-MNIST training images as root/<class>/<n>.png, written once and reused."""
    from PIL import Image

    marker = root / f".complete-{n}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    images = _idx(common.fashion_mnist_file("train-images-idx3-ubyte"))[:n]
    labels = _idx(common.fashion_mnist_file("train-labels-idx1-ubyte"))[:n]
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
    for i, (im, lab) in enumerate(zip(images, labels)):
        Image.fromarray(im, "L").save(root / f"class{lab}" / f"{i:05d}.png")
    marker.touch()
    return root


def tutorial_epoch(root: Path, workers: int) -> int:
    """One epoch the way the tutorials write it: a Dataset that opens each PNG with PIL, then transforms."""
    import torch
    from PIL import Image
    from torchvision import transforms

    class Folder(torch.utils.data.Dataset):
        def __init__(self, root):
            classes = sorted(p.name for p in root.iterdir() if p.is_dir())
            self.samples = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).glob("*.png"))]
            self.tf = transforms.Compose([transforms.RandomCrop(28, padding=3), transforms.RandomHorizontalFlip(),
                                          transforms.ToTensor(), transforms.Normalize((0.286,), (0.353,))])

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            path, label = self.samples[i]
            return self.tf(Image.open(path).convert("L")), label

    loader = torch.utils.data.DataLoader(Folder(root), batch_size=BATCH, shuffle=True, num_workers=workers)
    n = 0
    for x, _ in loader:
        n += len(x)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "imgclf-bench-fmnist-png")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from imgclf import AugmentConfig, DeviceLoader, load_data

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    root = build_tree(args.tree, args.images)
    print(f"tree ready in {time.perf_counter() - t0:.1f}s: {root}", flush=True)
    n, reps = args.images, args.repeats
    caches = Path(tempfile.mkdtemp(prefix="imgclf-bench-cache-"))

    def first_load():
        cache = caches / f"cold-{time.perf_counter_ns()}"
        load_data(root, cache_dir=str(cache), val_fraction=0)
        shutil.rmtree(cache)

    warm_cache = str(caches / "warm")
    load_data(root, cache_dir=warm_cache, val_fraction=0)
    data = load_data(root, cache_dir=warm_cache, val_fraction=0)
    assert data.cache_hit
    loader = DeviceLoader(data.train, BATCH, mean=data.mean, std=data.std, train=True, augment=AugmentConfig(), seed=0)

    def loader_epoch():
        for _ in loader:
            pass

    results = {}
    results["imgclf first load (decode + cache)"] = common.timed(first_load, reps)
    print("first load", results["imgclf first load (decode + cache)"], flush=True)
    results["imgclf cached load"] = common.timed(lambda: load_data(root, cache_dir=warm_cache, val_fraction=0), reps + 2)
    results["imgclf loader epoch, augmented (cached data)"] = common.timed(loader_epoch, reps + 2)
    print("cached + loader", results["imgclf cached load"], results["imgclf loader epoch, augmented (cached data)"], flush=True)
    results["tutorial epoch, num_workers=0"] = common.timed(lambda: tutorial_epoch(root, 0), reps)
    print("tutorial 0", results["tutorial epoch, num_workers=0"], flush=True)
    results["tutorial epoch, num_workers=2"] = common.timed(lambda: tutorial_epoch(root, 2), reps)
    shutil.rmtree(caches, ignore_errors=True)

    batches = -(-n // BATCH)
    rows = []
    for what, secs in results.items():
        m = common.median(secs)
        row = {"what": what, "median s": m, "images/s": n / m, "batches/s": batches / m if "epoch" in what else "",
               "runs (s)": " ".join(f"{s:.2f}" for s in secs)}
        rows.append(row)
    med = {k: common.median(v) for k, v in results.items()}
    best_tutorial = min(med["tutorial epoch, num_workers=0"], med["tutorial epoch, num_workers=2"])
    epoch_ratio = best_tutorial / med["imgclf loader epoch, augmented (cached data)"]
    decode_ratio = best_tutorial / med["imgclf first load (decode + cache)"]
    summary = [
        f"{n} PNG files of 28x28 gray, batch {BATCH}, augmentation: random crop (padding 3) + horizontal flip on both sides.",
        f"Epoch of batches from the cache vs the faster tutorial epoch: {epoch_ratio:.0f}x faster (target >= 50x): "
        + ("met" if epoch_ratio >= 50 else "NOT met"),
        f"First decode vs the faster tutorial epoch: {decode_ratio:.2f}x the speed (target >= 1, no slower): "
        + ("met" if decode_ratio >= 1 else "NOT met"),
        f"Cached load vs first load: {med['imgclf first load (decode + cache)'] / med['imgclf cached load']:.0f}x faster.",
    ]
    path = common.write("data_pipeline", rows, summary, {"images": n, "batch_size": BATCH})
    print(path.read_text())


if __name__ == "__main__":
    main()
