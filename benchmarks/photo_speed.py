"""Training and prediction images/s at photo size (224 px) for the transfer networks the README recommends,
on this CPU: channels-last against contiguous, the stem and first stages kept fixed (imgclf's transfer
default, --freeze-stride 4) against everything training, BatchNorm's statistics frozen as imgclf fine-tunes
(and, as an upper bound of folding them into the convolutions, no BatchNorm at all), and bf16 autocast where
the CPU has bf16 units. --profile adds where the time of one of imgclf's training steps goes, by kind of
operation (torch.profiler), for the first model: what bounds the speed on this CPU.

One configuration at a time, each timed over a few steps after a warm-up step, batch 32 of random
pixels (speed does not depend on the pictures). The CPU's model and vector flags are in the results:
these machines differ (some AVX2 only, some AVX-512 with bf16).

    python benchmarks/photo_speed.py [--models efficientnet_lite0,resnet18] [--steps 3] [--profile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

MODELS = ("efficientnet_lite0", "mobilenetv3_large_100", "resnet18", "resnet50", "convnext_nano")
BATCH = 32


def step_fn(name: str, size: int, *, channels_last: bool, freeze_stride: int, bf16: bool, train: bool,
            norms: str = "batch"):
    """One training (or prediction) step of batch BATCH as a function of no arguments. norms: 'batch'
    (BatchNorm following the batch), 'frozen' (its statistics kept, as imgclf fine-tunes) or 'none'
    (BatchNorm removed: the most that folding frozen statistics into the convolutions could gain)."""
    import timm
    import torch
    import torch.nn.functional as F

    from imgclf.models.transfer import freeze_early_layers

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    freeze_early_layers(model, freeze_stride)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train(train)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms == "frozen":
        for m in bns:
            m.eval()
    elif norms == "none":
        for m in bns:  # timm's BatchNormAct2d applies its activation after the norm: keep that
            act = getattr(m, "act", None)
            m.forward = (lambda a: (lambda x: a(x)))(act) if act is not None else (lambda x: x)
    x = torch.randn(BATCH, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if train:
                loss = F.cross_entropy(model(x).float(), y)
            else:
                with torch.no_grad():
                    model(x)
        if train:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return step


def rate(name: str, size: int, steps: int, **how) -> float:
    step = step_fn(name, size, **how)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return BATCH / common.median(times[1:])


def kind_of(key: str, shapes: list) -> str:
    """A profiler event's kind: convolutions by their weights' shape (depthwise [C, 1, k, k], 1x1, full),
    since depthwise and 1x1 convolutions run at very different shares of the CPU's peak."""
    if "conv" in key:
        weight = shapes[2] if "backward" in key and len(shapes) > 2 else (shapes[1] if len(shapes) > 1 else [])
        kind = ("depthwise" if len(weight) == 4 and weight[1] == 1 and weight[2] > 1
                else "1x1" if len(weight) == 4 and weight[2] == 1 else "full")
        return f"{kind} convolution, {'backward' if 'backward' in key else 'forward'}"
    if "batch_norm" in key:
        return f"BatchNorm (statistics frozen), {'backward' if 'backward' in key else 'forward'}"
    if "hardtanh" in key or "clamp" in key or "relu" in key:
        return "activation (ReLU6), forward and backward"
    if "copy_" in key or "contiguous" in key or "clone" in key:
        return "memory copies (layout changes)"
    if "Optimizer" in key or "_foreach" in key:
        return "optimizer step"
    return "everything else"


def train_flops(name: str, size: int) -> float:
    """FLOPs of one image's training step with the stem fixed: each convolution and linear layer's forward,
    its input gradient where something before it trains, and its weight gradient where it trains (2 per
    multiply-add). Counted from the layers' shapes: torch's FlopCounterMode counts a depthwise convolution's
    backward as a full one (30 GFLOP an image here instead of about 2)."""
    import timm
    import torch

    from imgclf.models.transfer import freeze_early_layers

    model = timm.create_model(name, num_classes=10)
    freeze_early_layers(model, 4)
    total = 0.0

    def count(layer, inputs, out) -> None:
        nonlocal total
        weight = layer.weight
        macs = out.numel() * (weight[0].numel() if isinstance(layer, torch.nn.Conv2d) else weight.shape[1])
        total += 2 * macs * (1 + int(inputs[0].requires_grad) + int(weight.requires_grad))

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    model(torch.randn(1, 3, size, size))  # with gradients on, so that requires_grad says what a step differentiates
    for hook in hooks:
        hook.remove()
    return total


def profile(name: str, size: int, steps: int) -> list[dict]:
    """Where one of imgclf's transfer training steps spends its time (stem fixed, norms frozen,
    channels-last), by kind of operation (self CPU time under torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = step_fn(name, size, channels_last=True, freeze_stride=4, bf16=False, train=True, norms="frozen")
    step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    spent = common.spent_by_kind(prof, kind_of)
    for row in spent:
        row["self CPU ms"] /= steps  # a step's
    return spent


def against_peak(name: str, size: int, rate: float) -> list[dict]:
    """The FLOP/s a training step at `rate` images/s achieves, against this CPU's fp32 matmul rate."""
    import torch

    per_image, peak = train_flops(name, size), common.matmul_gflops()
    achieved = per_image * rate / 1e9
    return [{"what": f"torch.mm 2048x2048 fp32, {torch.get_num_threads()} threads", "GFLOP/s": peak, "share of peak %": 100.0},
            {"what": f"{name} training step (stem fixed, norms frozen): {rate:.1f} img/s x {per_image / 1e9:.2f} GFLOP an image",
             "GFLOP/s": achieved, "share of peak %": 100 * achieved / peak}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also profile one training step of the first model")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one model at 64 px, one step")
    parser.add_argument("--results", default=str(common.RESULTS))
    args = parser.parse_args()
    import torch

    models = ["efficientnet_lite0"] if args.quick else [m for m in args.models.split(",") if m]
    size, steps = (64, 1) if args.quick else (args.size, args.steps)
    from imgclf.engine.cpu import has_bf16_units

    bf16 = has_bf16_units()  # without AVX512-BF16 or AMX, bf16 autocast emulates and is slower than fp32
    rows = []
    for name in models:
        row = {"model": name}
        row["train img/s, contiguous"] = rate(name, size, steps, channels_last=False, freeze_stride=0, bf16=False, train=True)
        row["train img/s, channels-last"] = base = rate(name, size, steps, channels_last=True, freeze_stride=0, bf16=False, train=True)
        row["train img/s, channels-last, stem fixed"] = fixed = rate(name, size, steps, channels_last=True, freeze_stride=4,
                                                                      bf16=False, train=True)
        row["stem fixed speed-up"] = fixed / base
        row["train img/s, imgclf's step (stem fixed, norms frozen)"] = ours = rate(
            name, size, steps, channels_last=True, freeze_stride=4, bf16=False, train=True, norms="frozen")
        row["train img/s, no BatchNorm (bound of folding it)"] = rate(name, size, steps, channels_last=True, freeze_stride=4,
                                                                      bf16=False, train=True, norms="none")
        row["imgclf's step against everything training"] = ours / base
        row["bf16 train img/s"] = (rate(name, size, steps, channels_last=True, freeze_stride=4, bf16=True, train=True)
                                   if bf16 else "no bf16 units")
        row["predict img/s, channels-last"] = rate(name, size, steps, channels_last=True, freeze_stride=0, bf16=False, train=False)
        rows.append(row)
        print(row, flush=True)
    summary = [f"{size} px, batch {BATCH}, {torch.get_num_threads()} threads; bf16 autocast "
               + ("measured (the CPU has bf16 units)" if bf16 else "not measured: this CPU has no AVX512-BF16 or AMX, where bf16 "
                  "is emulated and slower than fp32")]
    tables = {}
    if args.profile:
        spent = profile(models[0], size, steps)
        bound = against_peak(models[0], size, rows[0]["train img/s, imgclf's step (stem fixed, norms frozen)"])
        tables[f"Where a training step of {models[0]} goes (imgclf's transfer step: stem fixed, norms frozen, channels-last, "
               f"{size} px, batch {BATCH})"] = spent
        tables["The step's FLOP/s against this CPU's matmul rate"] = bound
        for row in spent + bound:
            print(row, flush=True)
    path = common.write("photo_speed", rows, summary, {"size": size, "batch": BATCH}, tables, folder=Path(args.results))
    print(path.read_text())


if __name__ == "__main__":
    main()
