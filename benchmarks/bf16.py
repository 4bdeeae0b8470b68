"""Issue 25's precision benchmark: bf16 autocast against float32 on this CPU, side by side in one run.

Speed: training-step and prediction images/s of the default network (small_resnet, 28 px, batch 256) and
two transfer networks (efficientnet_lite0 and resnet18, 224 px, batch 32), the two precisions taking
turns in each round (channels-last, random pixels: speed does not depend on the pictures). Accuracy:
`imgclf train fashion-mnist --epochs E --precision 32|bf16 --seed S` for each seed, the two precisions
taking turns, test accuracy from results.json. bf16 autocast is only measured on a CPU with bf16 units
(AVX512-BF16 or AMX): elsewhere it is emulated, and imgclf never uses it. Writes
benchmarks/results/bf16.{md,json}.

    python benchmarks/bf16.py [--seeds 3] [--epochs 12] [--rounds 3] [--speed-only] [--quick]

--quick (a smoke test): the default network's speed in one round, no training runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

NETWORKS = (("small_resnet", (1, 28, 28), 256), ("efficientnet_lite0", (3, 224, 224), 32), ("resnet18", (3, 224, 224), 32))


def _stepper(name: str, shape: tuple, batch: int, bf16: bool, train: bool):
    import torch

    from imgclf.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name, shape[0], 10, shape[1:]).to(memory_format=torch.channels_last).train(train)
    x = torch.randn(batch, *shape).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if not train:
                with torch.no_grad():
                    model(x)
                return
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    step()  # allocation and oneDNN's kernel choice, not timed
    return step


def speed(rounds: int, networks=NETWORKS) -> list[dict]:
    rows = []
    for name, shape, batch in networks:
        for train in (True, False):
            steps = {p: _stepper(name, shape, batch, p == "bf16", train) for p in ("fp32", "bf16")}
            times = common.interleaved({p: (lambda s=s: [s() for _ in range(3)]) for p, s in steps.items()}, rounds)
            rate = {p: 3 * batch / statistics.median(t) for p, t in times.items()}
            rows.append({"network": name, "input": "x".join(map(str, shape)), "batch": batch, "what": "training step" if train else "prediction",
                         "fp32 img/s": rate["fp32"], "bf16 img/s": rate["bf16"], "bf16 speed-up": rate["bf16"] / rate["fp32"]})
            print(rows[-1], flush=True)
    return rows


def accuracy(seeds: int, epochs: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        for precision in ("32", "bf16"):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                cmd = [sys.executable, "-m", "imgclf", "train", "fashion-mnist", "--epochs", str(epochs), "--precision", precision,
                       "--seed", str(seed), "--device", "cpu", "--out", out]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
                results = json.loads(next(Path(out).glob("*/results.json")).read_text())
                rows.append({"seed": seed, "precision": precision, "test acc %": 100 * results["test_acc"],
                             "wall s": time.perf_counter() - start})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--results", type=Path, default=common.RESULTS)
    args = ap.parse_args()
    from imgclf.engine.cpu import has_bf16_units

    if not has_bf16_units():
        common.write("bf16", [{"what": "not measured", "why": "this CPU has no AVX512-BF16 or AMX: bf16 would be emulated"}], [], {},
                     folder=args.results)
        return
    rows = speed(1, NETWORKS[:1]) if args.quick else speed(args.rounds)
    runs = [] if args.speed_only or args.quick else accuracy(args.seeds, args.epochs)
    summary, tables = [], {}
    if runs:
        by = {p: [r for r in runs if r["precision"] == p] for p in ("32", "bf16")}
        acc = {p: [r["test acc %"] for r in rs] for p, rs in by.items()}
        wall = {p: statistics.median(r["wall s"] for r in rs) for p, rs in by.items()}
        sd = {p: statistics.stdev(a) if len(a) > 1 else 0.0 for p, a in acc.items()}
        summary.append(
            f"Fashion-MNIST, {args.epochs} epochs, {args.seeds} seeds: float32 {statistics.mean(acc['32']):.2f} ± {sd['32']:.2f}% in "
            f"{wall['32']:.0f} s, bf16 {statistics.mean(acc['bf16']):.2f} ± {sd['bf16']:.2f}% in {wall['bf16']:.0f} s (median wall)"
        )
        tables["Test accuracy, imgclf train fashion-mnist"] = runs
    common.write("bf16", rows, summary, {"seeds": args.seeds, "epochs": args.epochs, "rounds": args.rounds}, tables, folder=args.results)


if __name__ == "__main__":
    main()
