"""Issue 3's measurement behind the default network: test accuracy per second of training.

Each candidate trains on Fashion-MNIST (54k train / 10k test) for the same wall-clock budget on this
machine, one after another: its number of steps is set from its measured speed so that its one-cycle
schedule ends inside the budget. Same recipe for all (SGD + Nesterov, one-cycle, label
smoothing 0.1, batch 256, crop + flip augmentation). Writes benchmarks/results/default_model.{md,json}.

    python benchmarks/default_model.py [--budget 90] [--candidates small_resnet:16,32,64 ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

BATCH = 256
DEFAULT_CANDIDATES = ["small_resnet:16,32,64", "small_resnet:24,48,96", "small_resnet:32,64,128"]


def build(spec: str, data):
    from imgclf.models.registry import create_model

    name, _, widths = spec.partition(":")
    kwargs = {"widths": tuple(int(w) for w in widths.split(","))} if widths else {}
    return create_model(name, data.channels, data.num_classes, data.image_size, **kwargs)


def images_per_second(model, loader, steps: int = 15) -> float:
    return common.train_step_rate(model, iter(loader), steps, warmup=3)


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        right += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return right / total


def train_for(spec: str, data, budget: float, seed: int = 0) -> dict:
    from imgclf import AugmentConfig, DeviceLoader

    torch.manual_seed(seed)
    model = build(spec, data)
    kw = dict(mean=data.mean, std=data.std)
    train = DeviceLoader(data.train, BATCH, train=True, augment=AugmentConfig(), seed=seed, drop_last=True, **kw)
    test = DeviceLoader(data.test, 1000, **kw)
    ips = images_per_second(build(spec, data), train)
    steps = max(1, int(budget * ips / BATCH))  # a step budget, so no candidate loses time to whole epochs
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.25)
    start = time.perf_counter()
    model.train()
    done = 0
    while done < steps:
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    from imgclf.models.summary import summarize

    flops = summarize(model, (data.channels, *data.image_size)).flops
    return {"model": spec, "params": params, "MFLOPs/image": flops / 1e6, "train images/s": ips, "epochs": round(steps * BATCH / len(data.train), 2),
            "train s": seconds, "test acc %": 100 * accuracy(model, test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=90.0, help="seconds of training per candidate")
    parser.add_argument("--candidates", nargs="*", default=DEFAULT_CANDIDATES)
    args = parser.parse_args()
    from imgclf import load_data

    torch.set_num_threads(2)
    data = load_data("fashion-mnist")
    rows = []
    for spec in args.candidates:
        rows.append(train_for(spec, data, args.budget))
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["test acc %"])
    summary = [f"Fashion-MNIST, {args.budget:g} s of training per candidate on this machine, one after another; "
               f"steps set from each candidate's measured speed.",
               f"Best test accuracy within the budget: {best['model']} ({best['test acc %']:.2f}%)."]
    path = common.write("default_model", rows, summary, {"budget_s": args.budget, "batch_size": BATCH})
    print(path.read_text())


if __name__ == "__main__":
    main()
