"""Issue 4's benchmark: the default `imgclf train fashion-mnist` beside the tutorial recipe, and the
per-step cost of feeding a model from the device vs a torch DataLoader.

Run one after another on the same machine, data already cached:
1. imgclf's default recipe (what `imgclf train fashion-mnist` does), through the Python API.
2. The tutorial recipe as seed 003 writes it: the nn.Sequential ConvNet, Adam 1e-3, batch 128,
   15 epochs, plain tensors batched by index in a Python loop, no augmentation.
3. Images/s of the training step of the default model fed by imgclf's DeviceLoader (channels-last on
   and off) vs by a torch DataLoader over a TensorDataset.
Writes benchmarks/results/train_fashion_mnist.{md,json}.

    python benchmarks/train_fashion_mnist.py [--skip-tutorial]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


def imgclf_default(out: str) -> dict:
    import imgclf

    run = imgclf.train("fashion-mnist", out=out)
    seconds = sum(r["seconds"] for r in run.history)
    t = run.config.train
    recipe = (f"imgclf default ({t.model}, {t.optimizer} lr {t.lr:g}, {t.schedule}, batch {t.batch_size}, "
              f"augmentation {'on' if t.augment else 'off'})")
    return {"recipe": recipe, "epochs": len(run.history),
            "train s": seconds, "s/epoch": seconds / len(run.history), "test acc %": 100 * run.test["acc"]}


def tutorial_recipe(data, epochs: int = 15) -> dict:
    """Seed 003's loop (common.tutorial_fit) on the training and validation images together."""
    start = time.perf_counter()
    model = common.tutorial_fit(np.concatenate([data.train.array(), data.val.array()]),
                                np.concatenate([data.train.labels, data.val.labels]), epochs)
    seconds = time.perf_counter() - start
    acc = common.tutorial_accuracy(model, data.test.array(), data.test.labels)
    return {"recipe": "tutorial (seed 003: Sequential ConvNet, Adam 1e-3, batch 128)", "epochs": epochs, "train s": seconds,
            "s/epoch": seconds / epochs, "test acc %": 100 * acc}


def step_rate(data, feed: str, steps: int = 40, batch: int = 256) -> float:
    """Images/s of training steps of the default model, fed one of three ways."""
    from imgclf import AugmentConfig, DeviceLoader, create_model

    torch.manual_seed(0)
    channels_last = feed == "imgclf DeviceLoader, channels-last"
    model = create_model("small_resnet", 1, 10, (28, 28))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if feed.startswith("imgclf"):
        batches = iter(DeviceLoader(data.train, batch, mean=data.mean, std=data.std, train=True, augment=AugmentConfig(),
                                    channels_last=channels_last))
    else:
        x = (torch.tensor(data.train.array(), dtype=torch.float32) / 255.0 - data.mean[0]) / data.std[0]
        ds = torch.utils.data.TensorDataset(x, torch.tensor(data.train.labels))
        batches = iter(torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True))
    return common.train_step_rate(model, batches, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tutorial", action="store_true", help="leave out the 7-minute tutorial recipe")
    args = parser.parse_args()
    import imgclf

    torch.set_num_threads(2)
    data = imgclf.load_data("fashion-mnist")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        rows.append(imgclf_default(out))
    print(rows[-1], flush=True)
    if not args.skip_tutorial:
        rows.append(tutorial_recipe(data))
        print(rows[-1], flush=True)
    feeds = ["torch DataLoader over TensorDataset", "imgclf DeviceLoader", "imgclf DeviceLoader, channels-last"]
    rates = {f: [] for f in feeds}
    for _ in range(3):  # interleaved, so drifts in machine load hit every feed alike
        for f in feeds:
            rates[f].append(step_rate(data, f))
    step_rows = [{"feed (default model, batch 256, CPU)": f, "median images/s": common.median(v),
                  "runs": " ".join(f"{r:,.0f}" for r in v)} for f, v in rates.items()]
    base = common.median(rates[feeds[0]])
    default = rows[0]
    summary = [f"imgclf default: {default['test acc %']:.2f}% test accuracy after {default['train s']:.0f} s of training "
               f"({default['s/epoch']:.1f} s/epoch); target >= 92% within 300 s: "
               + ("met" if default["test acc %"] >= 92 and default["train s"] <= 300 else "NOT met")]
    if not args.skip_tutorial:
        tut = rows[1]
        summary.append(f"tutorial recipe: {tut['test acc %']:.2f}% after {tut['train s']:.0f} s; imgclf reaches "
                       f"{default['test acc %'] - tut['test acc %']:+.2f} points in {default['train s'] / tut['train s']:.2f}x the time.")
    for f in feeds[1:]:
        summary.append(f"training step fed by {f}: {common.median(rates[f]) / base:.2f}x the images/s of the DataLoader feed.")
    summary.append("Per-step figures: " + "; ".join(f"{r['feed (default model, batch 256, CPU)']}: {r['median images/s']:,.0f} img/s ({r['runs']})" for r in step_rows))
    path = common.write("train_fashion_mnist", rows, summary, {"step_rates": step_rows})
    print(path.read_text())


if __name__ == "__main__":
    main()
