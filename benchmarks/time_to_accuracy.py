"""Issue 12's benchmark: accuracy per second of training, imgclf beside the tutorial, in one run.

Sections (--only chooses some; every one by default):
- fashion: Fashion-MNIST, data cached. The tutorial recipe of seed 003 (common.tutorial_fit) for 15
  epochs with its test accuracy after every epoch; imgclf's default (`imgclf train fashion-mnist`) at
  12 epochs, and as shorter complete runs (2 and 3 epochs) for the time to the tutorial's accuracy; a
  `time="3m"` budget run; and the 'best' preset. Training time is the sum of the epochs' step time
  (first step to last; validation passes excluded), as the issue defines it.
- grid: training sets of 1,000, 4,000 and 54,000 Fashion-MNIST images x 2, 5 and 12 epochs, imgclf's
  default against the tutorial at the same epochs, scored on 2,000 test images (small_data.grid).
- digits: scikit-learn's 8x8 digits, a stratified 80/20 split, `imgclf.train` with default settings,
  over at least 8 seeds (its small test set makes 3 too few).
- sizes: Fashion-MNIST enlarged to 28, 64, 128 and 224 px in 3 channels: training images/s and test
  accuracy after 3 epochs on 1,000 images of the default network (small_resnet, with its patch stem
  above 64 px), and above 64 px of resnet18 (the default there before the stem) and the speed of
  small_resnet without the stem.
- techniques: each switch of the config on (or off, where the default has it on) against the default,
  same data, epochs and seeds: test accuracy and training time on a Fashion-MNIST subset; torch.compile
  with its compile time (the first step) apart.
- peak: this CPU's fp32 matrix-multiply rate (a large torch.mm) beside the training step's achieved
  FLOP/s (forward+backward FLOPs per image, counted by PyTorch's FlopCounterMode, times images/s).
- profile: where one training step's time goes (torch.profiler over real steps), by kind of operation.
- switches: the recipe's augmentation switch on full Fashion-MNIST: flips alone against crops, shifts and
  flips at 20, 30 and 40 epochs: where the stronger augmentation starts to pay (issue 25).
- budgets: `--time` at 30 s, 1, 3 and 10 minutes on full Fashion-MNIST and on 4,000 of its training images
  (the whole test set), beside the plain default on each: the accuracy of each budget, the recipe it
  planned (epochs, augmentation, network) and whether it is at least every shorter budget's and, where
  the budget covers the default's time, the default's (issue 25: more time never gives less accuracy).
Mean and spread over --seeds seeds wherever accuracy is reported.

    python benchmarks/time_to_accuracy.py [--seeds 3] [--only fashion,grid,...] [--quick] [--results DIR]

Writes <results>/time_to_accuracy.{md,json} and time_to_accuracy.png (accuracy against training time).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
import small_data  # noqa: E402

SECTIONS = ("fashion", "grid", "digits", "sizes", "techniques", "peak", "profile", "switches", "budgets")
SWITCH_EPOCHS = (20, 30, 40)
BUDGETS = ("30s", "1m", "3m", "10m")
TECHNIQUES = [("default", {}), ("--ema", {"ema": True}), ("--no-tta", {"tta": False}), ("--mixup 0.2", {"mixup": 0.2}),
              ("--cutmix 1", {"cutmix": 1.0}), ("--erasing 0.25", {"erasing": 0.25}), ("--alternate-flips", {"alternate_flips": True}),
              ("--augment (crops and flips)", {"augment": True}), ("--label-smoothing 0", {"label_smoothing": 0.0}),
              ("--schedule onecycle", {"schedule": "onecycle"}), ("--schedule linear", {"schedule": "linear"}),
              ("--decay-norms", {"decay_norms": True}), ("--optimizer sgd (lr 0.1)", {"optimizer": "sgd"}),
              ("--clip-grad 1", {"clip_grad": 1.0}), ("--channels-last false", {"channels_last": False}), ("--compile", {"compile": True})]
TUTORIAL_TARGET = 0.895  # seed 003's reported Adam accuracy


def _spread(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def tutorial_curve(x, y, xt, yt, epochs: int, seed: int) -> list[dict]:
    """Seed 003's loop (as common.tutorial_fit) with the test accuracy after every epoch; the clock
    stops while it is scored."""
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    xs, ys = torch.tensor(x, dtype=torch.float32) / 255.0, torch.tensor(y, dtype=torch.long)
    c, h, w = xs.shape[1:]
    model = nn.Sequential(nn.Conv2d(c, 32, 3, padding="same"), nn.ReLU(), nn.Conv2d(32, 16, 3, padding="same"), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(8 * h * w, int(ys.max()) + 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    curve, seconds = [], 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        for i in range(0, len(xs), 128):
            loss = F.cross_entropy(model(xs[i:i + 128]), ys[i:i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds += time.perf_counter() - start
        curve.append({"epoch": epoch + 1, "train s": seconds, "test acc": common.tutorial_accuracy(model.eval(), xt, yt)})
    return curve


def imgclf_run(source, out: str, seed: int, **settings) -> dict:
    import imgclf

    start = time.perf_counter()
    run = imgclf.train(source, seed=seed, device="cpu", out=out, **settings)
    compiling = json.loads((run.run_dir / "results.json").read_text()).get("compile_seconds", 0.0)
    return {"test acc": run.test["acc"], "train s": sum(r["seconds"] for r in run.history), "wall s": time.perf_counter() - start,
            "compile s": compiling,
            "epochs": len(run.history), "val": [r.get("val_acc") for r in run.history], "first loss": run.history[0]["train_loss"]}


def fashion(seeds, out: str, quick: bool, skip: set[str]) -> tuple[list[dict], dict]:
    """The Fashion-MNIST table, and the curves for the plot."""
    import imgclf

    data = imgclf.load_data("fashion-mnist")
    source = "fashion-mnist"
    x, y = np.concatenate([data.train.array(), data.val.array()]), np.concatenate([data.train.labels, data.val.labels])
    xt, yt = data.test.array(), data.test.labels
    tutorial_epochs, full, short, budget, best = 15, 12, [2, 5], "3m", {"preset": "best"}
    if quick:  # a smoke test: 2,000 images, one epoch each
        x, y, xt, yt = x[:2000], y[:2000], xt[:500], yt[:500]
        source, tutorial_epochs, full, short, budget, best = (x, y), 1, 1, [1], "10s", {"preset": "best", "epochs": 1}
        extra = {"test": (xt, yt)}
    else:
        extra = {}
    rows, curves = [], {"tutorial": [], "imgclf default": [], "imgclf shorter runs": [], "preset best": [], "time budget": []}
    results: dict[str, list[dict]] = {k: [] for k in ("tutorial", "default", *[f"short{e}" for e in short], "budget", "best")
                                      if k not in skip}
    for seed in seeds:  # the recipes take turns within a seed: a slow spell of the machine falls on all of them
        if "tutorial" in results:
            tut = tutorial_curve(x, y, xt, yt, tutorial_epochs, seed)
            results["tutorial"].append(tut[-1] | {"curve": tut})
            curves["tutorial"].append([(r["train s"], r["test acc"]) for r in tut])
        results["default"].append(imgclf_run(source, out, seed, epochs=full, **extra))
        for e in short:
            results[f"short{e}"].append(imgclf_run(source, out, seed, epochs=e, **extra))
        if "budget" in results:
            results["budget"].append(imgclf_run(source, out, seed, time=budget, **extra))
        if "best" in results:
            results["best"].append(imgclf_run(source, out, seed, **best, **extra))
        print({k: [round(r["test acc"], 4) for r in v] for k, v in results.items()}, flush=True)
    names = {"tutorial": f"tutorial (seed 003: Sequential ConvNet, Adam 1e-3, batch 128), {tutorial_epochs} epochs",
             "default": f"imgclf train fashion-mnist (default, {full} epochs)", "budget": f"imgclf train fashion-mnist --time {budget}",
             "best": "imgclf train fashion-mnist --preset best", **{f"short{e}": f"imgclf default, --epochs {e}" for e in short}}
    for key, runs in results.items():
        rows.append({"recipe": names[key], "test acc % (mean ± sd)": _spread([r["test acc"] for r in runs]),
                     "train s (median)": statistics.median(r["train s"] for r in runs),
                     "wall s (median)": statistics.median(r.get("wall s", r["train s"]) for r in runs),
                     "runs": " ".join(f"{100 * r['test acc']:.2f}" for r in runs)})
    for key, label in (("default", "imgclf default"), ("best", "preset best"), ("budget", "time budget")):
        curves[label] = [(r["train s"], r["test acc"]) for r in results.get(key, [])]
    curves["imgclf shorter runs"] = [(r["train s"], r["test acc"]) for e in short for r in results[f"short{e}"]]
    return rows, {"curves": curves, "results": results, "short": short}


def _fashion_arrays(n: int | None):
    import imgclf

    data = imgclf.load_data("fashion-mnist")
    x, y = np.concatenate([data.train.array(), data.val.array()]), np.concatenate([data.train.labels, data.val.labels])
    if n is not None:
        keep = np.random.default_rng(0).permutation(len(x))[:n]
        x, y = x[keep], y[keep]
    return x, y, data.test.array(), data.test.labels


def _planned(run_dir: Path) -> str:
    """The recipe a run trained with, as its config.yaml records it."""
    import yaml

    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    t, aug = cfg["train"], cfg["data"]["augment"]
    how = "off" if not t["augment"] else "flips" if aug.get("crop_padding") == 0 else "crops+flips"
    return f"{t['model']}, {t['epochs']} epochs, augmentation {how}{', ema' if t.get('ema') else ''}{', tta' if t.get('tta') else ''}"


def switches(seeds, out: str, quick: bool) -> list[dict]:
    """Flips alone against crops and flips, at each of SWITCH_EPOCHS, on full Fashion-MNIST."""
    x, y, xt, yt = _fashion_arrays(2000 if quick else None)
    source, extra = ((x, y), {"test": (xt[:500], yt[:500])}) if quick else ("fashion-mnist", {})
    rows = []
    for epochs in ((1,) if quick else SWITCH_EPOCHS):
        runs: dict[str, list[dict]] = {"flips": [], "crops+flips": []}
        for seed in seeds:
            runs["flips"].append(imgclf_run(source, out, seed, epochs=epochs, augment=True, crop_padding=0, **extra))
            runs["crops+flips"].append(imgclf_run(source, out, seed, epochs=epochs, augment=True, **extra))
        for how, rs in runs.items():
            rows.append({"epochs": epochs, "augmentation": how, "test acc % (mean ± sd)": _spread([r["test acc"] for r in rs]),
                         "train s (median)": statistics.median(r["train s"] for r in rs),
                         "runs": " ".join(f"{100 * r['test acc']:.2f}" for r in rs)})
            print(rows[-1], flush=True)
    return rows


def budgets(seeds, out: str, quick: bool) -> tuple[list[dict], list[str]]:
    """--time sweeps on full Fashion-MNIST and on 4,000 of its images, beside the plain default."""
    import imgclf

    rows, verdicts = [], []
    sets = [("2,000 images (quick)", 2000)] if quick else [("Fashion-MNIST (54,000 + 6,000 validation)", None), ("4,000 images", 4000)]
    for name, n in sets:
        x, y, xt, yt = _fashion_arrays(n)
        source, extra = ("fashion-mnist", {}) if n is None else ((x, y), {"test": (xt, yt)})
        budgets_here = ("10s", "20s") if quick else BUDGETS
        found: dict[str, list[dict]] = {b: [] for b in ("default", *budgets_here)}
        for seed in seeds:
            for b in found:
                settings = {"epochs": 1} if quick and b == "default" else {} if b == "default" else {"time": b}
                start = time.perf_counter()
                run = imgclf.train(source, seed=seed, device="cpu", out=out, **settings, **extra)
                found[b].append({"test acc": run.test["acc"], "wall s": time.perf_counter() - start, "planned": _planned(run.run_dir)})
            print({b: [round(r["test acc"], 4) for r in rs] for b, rs in found.items()}, flush=True)
        means = {b: statistics.mean(r["test acc"] for r in rs) for b, rs in found.items()}
        default_wall = statistics.median(r["wall s"] for r in found["default"])
        best_before = 0.0
        for b, rs in found.items():
            seconds = None if b == "default" else common_seconds(b)
            rows.append({"data": name, "run": "default" if b == "default" else f"--time {b}",
                         "test acc % (mean ± sd)": _spread([r["test acc"] for r in rs]),
                         "wall s (median)": statistics.median(r["wall s"] for r in rs),
                         "planned": " / ".join(sorted({r["planned"] for r in rs})),
                         "runs": " ".join(f"{100 * r['test acc']:.2f}" for r in rs)})
            if seconds is None:
                continue
            falls = means[b] < best_before - 1e-9
            below_default = seconds >= default_wall and means[b] < means["default"] - 1e-9
            verdicts.append(f"{name}, --time {b}: {100 * means[b]:.2f}%"
                            + (f", below a shorter budget's {100 * best_before:.2f}%" if falls else "")
                            + (f", below the default's {100 * means['default']:.2f}% (which took {default_wall:.0f} s)" if below_default else "")
                            + ("" if falls or below_default else ": at least every shorter budget"
                               + (" and the default" if seconds >= default_wall else "")))
            best_before = max(best_before, means[b])
    return rows, verdicts


def common_seconds(budget: str) -> float:
    from imgclf.config import parse_duration

    return parse_duration(budget)


def time_to_target(info: dict) -> list[str]:
    """Seconds to the tutorial's final accuracy: the tutorial's own epochs beside imgclf's shortest
    complete run that reaches it (every imgclf run ends its schedule; intermediate epochs of a longer
    run are not counted)."""
    lines = []
    res = info["results"]
    if "tutorial" not in res:
        return []
    target = statistics.mean(r["test acc"] for r in res["tutorial"])
    tut_s = statistics.median(r["train s"] for r in res["tutorial"])
    for key in [f"short{e}" for e in info["short"]] + ["default"]:
        accs = [r["test acc"] for r in res[key]]
        if statistics.mean(accs) >= target:
            ours = statistics.median(r["train s"] for r in res[key])
            lines.append(f"the tutorial's {100 * target:.2f}% (after {tut_s:.0f} s) is reached by imgclf's {res[key][0]['epochs']}-epoch "
                         f"run in {ours:.0f} s: {tut_s / ours:.1f}x sooner (target >= 5x: {'met' if tut_s / ours >= 5 else 'NOT met'})")
            return lines
    return [f"no imgclf run reached the tutorial's {100 * target:.2f}%"]


def grid_from_fashion(info: dict) -> list[dict]:
    """The grid's full-set row from the fashion section's runs, instead of training them again: imgclf's
    complete 2-, 5- and 12-epoch runs, and the tutorial's test accuracy after its 2nd, 5th and 12th epoch
    (its constant learning rate makes that the same as a run of that length). Scored on the whole test set;
    the tutorial trains on all 60,000 images, imgclf on 54,000 (it holds 6,000 out for validation)."""
    res, rows = info["results"], []
    for epochs, key in ((2, "short2"), (5, "short5"), (12, "default")):
        if key not in res or "tutorial" not in res or len(res["tutorial"][0]["curve"]) < epochs:
            continue
        ours = [r["test acc"] for r in res[key]]
        tut = [r["curve"][epochs - 1]["test acc"] for r in res["tutorial"]]
        rows.append({"images": 54000, "epochs": epochs, "imgclf test acc % (mean)": 100 * np.mean(ours),
                     "tutorial test acc % (mean)": 100 * np.mean(tut), "difference (points)": 100 * (np.mean(ours) - np.mean(tut)),
                     "imgclf runs": " ".join(f"{100 * a:.1f}" for a in ours), "tutorial runs": " ".join(f"{100 * a:.1f}" for a in tut),
                     "imgclf epoch-1 train loss": float(np.mean([r["first loss"] for r in res[key]]))})
    return rows


def grid(seeds, out: str, quick: bool, sizes: list[int]) -> list[dict]:
    x, y, xt, yt = small_data.fashion_mnist()
    sizes, epochs = ([300], [1]) if quick else (sizes, [2, 5, 12])
    return small_data.grid(x, y, xt, yt, sizes, epochs, seeds, out)


DIGITS_SEEDS = 8  # at least: a run's 360 test images make its score move by about 0.8 points from seed to seed


def digits(seeds, out: str, quick: bool) -> list[dict]:
    from sklearn.datasets import load_digits

    seeds = seeds if quick or len(seeds) >= DIGITS_SEEDS else list(range(DIGITS_SEEDS))
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    x, xt, y, yt = train_test_split(images, d.target.astype(np.int64), test_size=0.2, stratify=d.target, random_state=0)
    settings = {"epochs": 1} if quick else {}
    runs = [imgclf_run((x, y), out, seed, test=(xt, yt), **settings) for seed in seeds]
    return [{"recipe": "imgclf.train(digits 80%) with default settings", "test images": len(yt),
             "test acc % (mean ± sd)": _spread([r["test acc"] for r in runs]), "train s (median)": statistics.median(r["train s"] for r in runs),
             "wall s (median)": statistics.median(r["wall s"] for r in runs), "epochs": runs[0]["epochs"],
             "runs": " ".join(f"{100 * r['test acc']:.2f}" for r in runs)}]


def techniques(seeds, out: str, quick: bool) -> list[dict]:
    """Each switch against the default on the same subset, epochs and seeds (the techniques take turns
    within a seed). 12 epochs: the default trains with flips and scores with test-time views there."""
    x, y, xt, yt = small_data.fashion_mnist()
    n, epochs, chosen = (300, 1, TECHNIQUES[:2]) if quick else (10000, 12, TECHNIQUES)
    runs: dict[str, list[dict]] = {name: [] for name, _ in chosen}
    for seed in seeds:
        pick = np.random.default_rng(seed).permutation(len(x))[:n]
        for name, settings in chosen:
            run = imgclf_run((x[pick], y[pick]), out, seed, test=(xt, yt), epochs=epochs, **settings)
            runs[name].append(run)
    base = statistics.mean(r["test acc"] for r in runs["default"])
    rows = [{"setting": name, f"test acc % ({n} images, {epochs} epochs, mean)": 100 * statistics.mean(r["test acc"] for r in rs),
             "vs default (points)": 100 * (statistics.mean(r["test acc"] for r in rs) - base),
             "train s (median)": statistics.median(r["train s"] for r in rs),
             "of which compiling s": statistics.median(r["compile s"] for r in rs) if "compile" in dict(chosen)[name] else "-",
             "runs": " ".join(f"{100 * r['test acc']:.2f}" for r in rs)} for name, rs in runs.items()]
    print(rows, flush=True)
    return rows


def _resized(images: np.ndarray, side: int) -> np.ndarray:
    import torch.nn.functional as F

    x = torch.tensor(images[:, None], dtype=torch.float32)
    if side != x.shape[-1]:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous().numpy()


def _step_rate(name: str, side: int, batch: int, steps: int, **kwargs) -> float:
    from imgclf import create_model

    model = create_model(name, 3, 10, (side, side), **kwargs).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    return common.train_step_rate(model, iter(lambda: (x, y), None), steps, warmup=2)


def sizes(seeds, out: str, quick: bool) -> list[dict]:
    """Speed and accuracy of the default network by input size; above 64 px beside resnet18 (the default
    there until the patch stem) and small_resnet without its stem (speed only: training cannot ask for it)."""
    from imgclf.models.registry import default_model_name

    x, y, xt, yt = small_data.fashion_mnist()
    n, n_test, epochs = (200, 100, 1) if quick else (1000, 500, 3)
    rows = []
    for side in ([28, 72] if quick else [28, 64, 128, 224]):
        default = default_model_name((side, side))
        train, test = _resized(x[:n, 0], side), _resized(xt[:n_test, 0], side)
        candidates = [(default, {}, " (default)")] + ([("resnet18", {}, ""), (default, {"patch": 1}, " without the patch stem")]
                                                      if side > 64 else [])
        for name, kwargs, label in candidates:
            rate = statistics.median(_step_rate(name, side, 32, 3 if quick else 8, **kwargs) for _ in range(1 if quick else 3))
            row = {"side px": side, "network": name + label, "train images/s (batch 32)": rate,
                   f"test acc % ({n} images, {epochs} epochs)": "-", "train s": "-"}
            if not kwargs:
                run = imgclf_run((train, y[:n]), out, seeds[0], test=(test, yt[:n_test]), model=name, epochs=epochs)
                row |= {f"test acc % ({n} images, {epochs} epochs)": 100 * run["test acc"], "train s": run["train s"]}
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


def peak(quick: bool) -> list[dict]:
    """The fp32 matmul rate of this CPU and the default training step's achieved FLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    from imgclf import create_model
    from imgclf.models.summary import summarize

    side = 1024 if quick else 2048
    mm_flops = common.matmul_gflops(side, 3 if quick else 10) * 1e9
    model = create_model("small_resnet", 1, 10, (28, 28)).to(memory_format=torch.channels_last)
    forward = summarize(model, (1, 28, 28)).flops
    counter = FlopCounterMode(display=False)
    x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with counter:
        torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (64,))).backward()
    train_per_image = counter.get_total_flops() / 64
    rate = _default_step_rate(3 if quick else 30)
    achieved = train_per_image * rate
    return [{"what": f"torch.mm {side}x{side} fp32, {torch.get_num_threads()} threads", "GFLOP/s": mm_flops / 1e9, "share of peak %": 100.0},
            {"what": f"default training step (small_resnet 28x28, batch 256): {rate:,.0f} img/s x {train_per_image / 1e6:.1f} MFLOP "
                     f"(forward {forward / 1e6:.1f})", "GFLOP/s": achieved / 1e9, "share of peak %": 100 * achieved / mm_flops}]


def _default_step_rate(steps: int) -> float:
    import imgclf
    from imgclf import DeviceLoader, create_model

    data = imgclf.load_data("fashion-mnist")
    model = create_model("small_resnet", 1, 10, (28, 28)).to(memory_format=torch.channels_last)
    loader = DeviceLoader(data.train, 256, mean=data.mean, std=data.std, train=True, channels_last=True, drop_last=True)
    return common.train_step_rate(model, iter(loader), steps)


CATEGORIES = [("convolution", ("conv", "mkldnn")), ("pooling", ("pool", "max", "amax")), ("normalisation", ("batch_norm",)),
              ("activation", ("relu", "threshold")), ("optimizer", ("adam", "_foreach", "optimizer", "lerp", "addcdiv", "sqrt")),
              ("loss", ("cross_entropy", "log_softmax", "nll")), ("data", ("index", "gather", "randperm", "pad", "to_copy", "copy_"))]


def profile(quick: bool) -> list[dict]:
    """Self CPU time of one epoch's worth of real training steps (the default trainer's), by kind of op."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import imgclf
    from imgclf.engine import recipe
    from imgclf.engine.trainer import Trainer

    data = imgclf.load_data("fashion-mnist")
    config, _ = recipe.resolve(imgclf.Config().override(device="cpu"), data)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(data, config, Path(out) / "run")
        batches = iter(trainer.train_loader)
        for _ in range(3):
            trainer.train_step(*next(batches))
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3 if quick else 40):
                with torch.profiler.record_function("data"):
                    x, y = next(batches)
                trainer.train_step(x, y)
    def kind_of(key: str, _shapes) -> str | None:
        name = key.lower()
        return None if name == "data" else next((k for k, words in CATEGORIES if any(w in name for w in words)), "other")

    return common.spent_by_kind(prof, kind_of)


def plot(curves: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for seed_curve in curves["tutorial"]:
        ax.plot(*zip(*seed_curve), color="tab:gray", marker=".", alpha=0.7, label="tutorial (per epoch)")
    styles = {"imgclf shorter runs": ("tab:blue", "o"), "imgclf default": ("tab:blue", "s"), "time budget": ("tab:green", "^"),
              "preset best": ("tab:red", "D")}
    for label, (color, marker) in styles.items():
        if curves.get(label):
            ax.scatter(*zip(*curves[label]), color=color, marker=marker, label=label + " (complete runs)", zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="lower right")
    ax.set_xlabel("training time, s (2-core CPU)" if not torch.cuda.is_available() else "training time, s")
    ax.set_ylabel("Fashion-MNIST test accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny versions of every section: a smoke test")
    parser.add_argument("--grid-sizes", type=lambda t: [int(v) for v in t.split(",")], default=[1000, 4000, 54000],
                        help="training-set sizes of the grid (default: 1000,4000,54000)")
    parser.add_argument("--skip", default="", help="fashion recipes to leave out, comma-separated: tutorial, best, budget")
    parser.add_argument("--results", help="folder for the results files (default: benchmarks/results)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    logging.getLogger("imgclf").setLevel(logging.WARNING)
    seeds = list(range(1 if args.quick else args.seeds))
    folder = Path(args.results) if args.results else common.RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    rows, summary, tables, extra = [], [], {}, {"seeds": seeds, "sections": chosen, "quick": args.quick}
    with tempfile.TemporaryDirectory() as out:
        if "fashion" in chosen:
            rows, info = fashion(seeds, out, args.quick, {s.strip() for s in args.skip.split(",") if s.strip()})
            summary += time_to_target(info)
            extra["fashion"] = info["results"]
            summary.append(f"accuracy against time: {plot(info['curves'], folder / 'time_to_accuracy.png').name}")
        if "grid" in chosen:
            reused = "fashion" in chosen and not args.quick and 54000 in args.grid_sizes
            grid_rows = grid(seeds, out, args.quick, [n for n in args.grid_sizes if not (reused and n == 54000)])
            if reused:
                grid_rows += grid_from_fashion(info)
                summary.append("grid: the 54,000-image row is the fashion section's runs (whole test set; the tutorial on all 60,000 "
                               "training images), the other rows 2,000 test images")
            tables["Small data: imgclf's default against the tutorial at the same epochs"] = grid_rows
            behind = [r for r in grid_rows if r["difference (points)"] < 0]
            summary.append(f"grid: imgclf's default ahead in {len(grid_rows) - len(behind)} of {len(grid_rows)} cells (mean of "
                           f"{len(seeds)} seed(s)); target: every cell")
        if "digits" in chosen:
            tables["digits (scikit-learn 8x8), 20% held out for test"] = digit_rows = digits(seeds, out, args.quick)
            summary.append(f"digits: {digit_rows[0]['test acc % (mean ± sd)']}% in {digit_rows[0]['train s (median)']:.1f} s of "
                           "training; target >= 98.5% in <= 20 s")
        if "sizes" in chosen:
            tables["Image size: the default network's speed and accuracy (Fashion-MNIST enlarged, 3 channels)"] = sizes(seeds, out, args.quick)
        if "techniques" in chosen:
            tables["Techniques, each against the default (Fashion-MNIST subset, the whole test set)"] = techniques(seeds, out, args.quick)
        if "peak" in chosen:
            tables["How close training comes to the machine's limit"] = peak_rows = peak(args.quick)
            summary.append(f"the default training step reaches {peak_rows[1]['share of peak %']:.0f}% of this CPU's fp32 matmul rate "
                           f"({peak_rows[1]['GFLOP/s']:.1f} of {peak_rows[0]['GFLOP/s']:.1f} GFLOP/s)")
        if "profile" in chosen:
            tables["Where a training step's time goes (torch.profiler, self CPU time)"] = profile(args.quick)
        if "switches" in chosen:
            tables["Augmentation switch: flips alone against crops and flips (full Fashion-MNIST)"] = switches(seeds, out, args.quick)
        if "budgets" in chosen:
            budget_rows, verdicts = budgets(seeds, out, args.quick)
            tables["Time budgets: --time against the plain default (the whole test set)"] = budget_rows
            summary += verdicts
    if not rows:  # the main table is the first section that ran
        first = next(iter(tables))
        rows = tables.pop(first)
        summary.insert(0, f"main table: {first}")
    path = common.write("time_to_accuracy", rows, summary, extra, tables=tables, folder=folder)
    print(path.read_text())


if __name__ == "__main__":
    main()
