"""Issue 25's contention benchmark: training images/s on an idle machine and beside a busy process, per
thread setting.

One training run at a time, each in its own process (torch's OpenMP runtime starts fresh): `imgclf.train`
on 4,000 Fashion-MNIST training images for 2 epochs on the CPU, with --threads 1, --threads N (every
core) and imgclf's default (the cores the others leave free, engine/cpu.py), at two batch sizes: 32
(what the recipe picks for a set this small) and 256 (its pick on full Fashion-MNIST). Each runs idle,
beside a Python loop that keeps one core busy (a browser, an editor's indexer), and beside a second
training run (torch on every core, as a second `imgclf train` or another notebook would). The figure is
the last epoch's training images/s (metrics.csv: validation and start-up excluded). The neighbour starts
before the run and is stopped after it. Writes benchmarks/results/busy.{md,json}.

    python benchmarks/busy.py [--images 4000] [--epochs 2] [--quick] [--results DIR]

--quick (a smoke test): 600 images, one epoch, batch 32, idle and beside the Python loop.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

# The two neighbours: one core of pure Python, or torch training on every core (OpenMP threads that
# spin-wait at barriers like ours).
SPIN = "import time\nwhile True: pass\n"
TORCH = """
import torch
m = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3), torch.nn.Flatten(), torch.nn.Linear(64 * 24 * 24, 10))
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
opt = torch.optim.SGD(m.parameters(), 0.01)
while True:
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
"""
RUN = """
import sys, numpy as np, imgclf
d = np.load(sys.argv[1])
threads = None if sys.argv[3] == "auto" else int(sys.argv[3])
imgclf.train((d["x"], d["y"]), epochs=int(sys.argv[4]), batch_size=int(sys.argv[5]), threads=threads, device="cpu", out=sys.argv[2])
"""


def _idx(stem: str, n: int) -> np.ndarray:
    with gzip.open(common.fashion_mnist_file(stem)) as f:
        data = f.read()
    return np.frombuffer(data, np.uint8, offset=16 if "images" in stem else 8)[: n * (784 if "images" in stem else 1)]


def _one(data: Path, threads: str, epochs: int, batch: int, neighbour: str | None) -> dict:
    other = subprocess.Popen([sys.executable, "-c", neighbour]) if neighbour else None
    try:
        time.sleep(1.0 if neighbour else 0.0)  # the neighbour is under way before the run looks
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run([sys.executable, "-c", RUN, str(data), out, threads, str(epochs), str(batch)],
                                  capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
            if proc.returncode != 0:
                raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
            rows = list(csv.DictReader(open(next(Path(out).glob("*/metrics.csv")))))
            said = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines()
                    if "machine is busy" in line or "now keep" in line]
            start = next(line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if line.startswith("device cpu"))
    finally:
        if other is not None:
            other.kill()
            other.wait()
    used = start.split("(", 1)[1].split(")", 1)[0]  # "2 threads"
    return {"images/s": float(rows[-1]["images_per_s"]), "threads used": used, "said": " / ".join(said)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--results", type=Path, default=common.RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.images, args.epochs = 600, 1
    from imgclf.engine.cpu import usable_cpus

    cores = usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fmnist.npz"
        np.savez(data, x=_idx("train-images-idx3-ubyte", args.images).reshape(-1, 28, 28),
                 y=_idx("train-labels-idx1-ubyte", args.images).astype(np.int64))
        rows = []
        batches = (32,) if args.quick else (32, 256)
        neighbours = [("idle", None), ("beside a 1-core Python loop", SPIN), (f"beside torch training on {cores} cores", TORCH)]
        for batch in batches:
            idle = {}
            for where, neighbour in neighbours[:2] if args.quick else neighbours:
                for threads in (str(cores), "1", "auto"):  # every core first: the idle figure the others are put against
                    r = _one(data, threads, args.epochs, batch, neighbour)
                    name = f"--threads {threads}" if threads != "auto" else "default (free cores)"
                    if where == "idle":
                        idle[threads] = r["images/s"]
                    rows.append({"batch": batch, "machine": where, "threads": name, "threads used": r["threads used"],
                                 "images/s": r["images/s"], "of idle at every core": r["images/s"] / idle[str(cores)],
                                 "said": r["said"] or "-"})
                    print(rows[-1], flush=True)
    summary = []
    for batch in batches:
        mine = [r for r in rows if r["batch"] == batch]
        full = next(r for r in mine if r["machine"] == "idle" and r["threads"] == f"--threads {cores}")["images/s"]
        for where in sorted({r["machine"] for r in mine if r["machine"] != "idle"}):
            every = next(r for r in mine if r["machine"] == where and r["threads"] == f"--threads {cores}")["images/s"]
            auto = next(r for r in mine if r["machine"] == where and r["threads"] == "default (free cores)")
            summary.append(
                f"batch {batch}, {where}: the default {auto['images/s']:,.0f} img/s ({auto['threads used']}) against "
                f"{every:,.0f} with every core's thread ({auto['images/s'] / every:.1f}x); {auto['images/s'] / (full / cores):.2f} of the idle "
                f"speed per core ({full:,.0f} / {cores}) on the core left free"
            )
    common.write("busy", rows, summary, {"images": args.images, "epochs": args.epochs}, folder=args.results)


if __name__ == "__main__":
    main()
