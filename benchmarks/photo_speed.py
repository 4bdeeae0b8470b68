"""Training and prediction images/s at photo size (224 px) for the transfer networks the README recommends,
on this CPU: channels-last against contiguous, the stem and first stages kept fixed (imgclf's transfer
default, --freeze-stride 4) against everything training, and bf16 autocast where the CPU has bf16 units.

One configuration at a time, each timed over a few steps after a warm-up step, batch 32 of random
pixels (speed does not depend on the pictures). The CPU's model and vector flags are in the results:
these machines differ (some AVX2 only, some AVX-512 with bf16).

    python benchmarks/photo_speed.py [--models efficientnet_lite0,resnet18] [--steps 3]
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


def cpu_has_bf16() -> bool:
    """bf16 units (AVX512-BF16 or AMX): without them bf16 autocast emulates and is slower than fp32."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def rate(name: str, size: int, steps: int, *, channels_last: bool, freeze_stride: int, bf16: bool, train: bool) -> float:
    import timm
    import torch
    import torch.nn.functional as F

    from imgclf.models.transfer import freeze_early_layers

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    freeze_early_layers(model, freeze_stride)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train(train)
    x = torch.randn(BATCH, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
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
        times.append(time.perf_counter() - start)
    return BATCH / common.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one model at 64 px, one step")
    parser.add_argument("--results", default=str(common.RESULTS))
    args = parser.parse_args()
    import torch

    models = ["efficientnet_lite0"] if args.quick else [m for m in args.models.split(",") if m]
    size, steps = (64, 1) if args.quick else (args.size, args.steps)
    bf16 = cpu_has_bf16()
    rows = []
    for name in models:
        row = {"model": name}
        row["train img/s, contiguous"] = rate(name, size, steps, channels_last=False, freeze_stride=0, bf16=False, train=True)
        row["train img/s, channels-last"] = base = rate(name, size, steps, channels_last=True, freeze_stride=0, bf16=False, train=True)
        row["train img/s, channels-last, stem fixed"] = fixed = rate(name, size, steps, channels_last=True, freeze_stride=4,
                                                                      bf16=False, train=True)
        row["stem fixed speed-up"] = fixed / base
        row["bf16 train img/s"] = (rate(name, size, steps, channels_last=True, freeze_stride=4, bf16=True, train=True)
                                   if bf16 else "no bf16 units")
        row["predict img/s, channels-last"] = rate(name, size, steps, channels_last=True, freeze_stride=0, bf16=False, train=False)
        rows.append(row)
        print(row, flush=True)
    summary = [f"{size} px, batch {BATCH}, {torch.get_num_threads()} threads; bf16 autocast "
               + ("measured (the CPU has bf16 units)" if bf16 else "not measured: this CPU has no AVX512-BF16 or AMX, where bf16 "
                  "is emulated and slower than fp32")]
    path = common.write("photo_speed", rows, summary, {"size": size, "batch": BATCH}, folder=Path(args.results))
    print(path.read_text())


if __name__ == "__main__":
    main()
