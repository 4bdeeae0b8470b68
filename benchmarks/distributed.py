"""Issue 13's benchmark: training throughput of the default model in one process against several.

Side by side, taking turns in each round, on this machine: `imgclf train fashion-mnist --epochs E` in
one process using every core, and under torchrun in N processes (gloo on the CPU, threads = cores / N;
NCCL and one GPU per process on a GPU machine). The figure is the training images/s of the run's epochs
(metrics.csv: images of all ranks over the epoch's step time; validation and start-up excluded), and the
wall time of the whole command beside it. On a machine with a GPU the single process is also measured
there, the data resident on the device. Writes benchmarks/results/distributed.{md,json}.

    python benchmarks/distributed.py [--rounds 3] [--epochs 1] [--nproc 2] [--results DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


def _train(cmd: list[str], out: Path, env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = list(csv.DictReader(open(next(out.glob("*/metrics.csv")))))
    rates = [float(r["images_per_s"]) for r in rows]
    return {"images/s": statistics.median(rates), "train s": sum(float(r["seconds"]) for r in rows), "wall s": wall,
            "val acc": float(rows[-1]["val_acc"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--quick", action="store_true", help="a smoke test: digits, one round")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    source = "digits" if args.quick else "fashion-mnist"
    rounds = 1 if args.quick else args.rounds
    cuda = common.machine()["gpu"] != "none"
    device = "cuda" if cuda else "cpu"
    base = ["-m", "imgclf", "train", source, "--epochs", str(args.epochs), "--device", device, "--batch-size", "256"]
    per_process = str(256 // args.nproc)
    variants = {
        f"1 process x {cores} threads": ([sys.executable, *base], {"OMP_NUM_THREADS": str(cores)}),
        f"{args.nproc} processes x {max(1, cores // args.nproc)} thread(s)":
            ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
              *base[:-1], per_process], {"OMP_NUM_THREADS": str(max(1, cores // args.nproc))}),
    }
    if cuda:
        variants = {"1 GPU, data resident": variants[f"1 process x {cores} threads"]}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, (cmd, env) in variants.items():
                out = Path(tmp) / f"{r}-{len(runs[name])}-{name.split()[0]}"
                runs[name].append(_train([*cmd, "--out", str(out)], out, {**os.environ, **env}))
                print(name, runs[name][-1], flush=True)
    rows = [{"configuration": name, "global batch": 256, "train images/s (median)": statistics.median(r["images/s"] for r in rs),
             "per round": " ".join(f"{r['images/s']:,.0f}" for r in rs), "wall s (median)": statistics.median(r["wall s"] for r in rs),
             "val acc after the run": statistics.median(r["val acc"] for r in rs)} for name, rs in runs.items()]
    summary = []
    if len(rows) == 2:
        ratio = rows[1]["train images/s (median)"] / rows[0]["train images/s (median)"]
        summary.append(f"{rows[1]['configuration']} train at {ratio:.2f}x the images/s of {rows[0]['configuration']} "
                       f"({args.epochs} epoch(s) of {source}, {rounds} rounds, taking turns)")
    common.write("distributed", rows, summary, {"epochs": args.epochs, "rounds": rounds, "source": source}, folder=args.results)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
