"""Shared by the benchmark scripts: the machine's description and the results file writer."""

from __future__ import annotations

import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """The machine a figure came from: the CPU's model and speed flags as every run records them
    (imgclf.engine.cpu), the GPU, versions. These machines differ (AVX2 only, or AVX-512 with bf16)."""
    import torch

    from imgclf.engine.cpu import features

    f = features()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": f["cpu"], "cpu flags": f["flags"], "cores": f["cores"], "torch kernels": f["kernels"], "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def fashion_mnist_file(stem: str) -> Path:
    """A Fashion-MNIST IDX file wherever 'make data' put it (Debian's package or imgclf's download)."""
    from imgclf.config import DataConfig
    from imgclf.data.builtin import locate

    folder = locate("fashion-mnist", DataConfig())
    return folder / f"{stem}.gz" if (folder / f"{stem}.gz").exists() else folder / stem


def timed(fn, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of fn(), run one after another (never concurrently)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each fn per round, the fns taking turns within a round, so that a slow spell of a
    shared machine falls on all of them rather than on one."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name] += timed(fn, 1)
    return out


def tutorial_fit(images, labels, epochs: int, seed: int = 0):
    """Seed 003's recipe as it writes it: images / 255 as float tensors, the nn.Sequential ConvNet (three
    same-padded 3x3 convs 32/16/8, one Linear), Adam 1e-3, batch 128, the data walked in order, no
    augmentation. images: uint8 N x C x H x W. Returns the trained model (eval mode)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    x = torch.tensor(images, dtype=torch.float32) / 255.0
    y = torch.tensor(labels, dtype=torch.long)
    c, h, w = x.shape[1:]
    model = nn.Sequential(nn.Conv2d(c, 32, 3, padding="same"), nn.ReLU(), nn.Conv2d(32, 16, 3, padding="same"), nn.ReLU(),
                          nn.Conv2d(16, 8, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(8 * h * w, int(y.max()) + 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 128):
            loss = F.cross_entropy(model(x[i:i + 128]), y[i:i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def tutorial_accuracy(model, images, labels) -> float:
    """Test accuracy of a tutorial_fit model (inputs scaled by 1/255, as it trained)."""
    import torch

    x = torch.tensor(images, dtype=torch.float32) / 255.0
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred.numpy() == labels).mean())


def train_step_rate(model, batches, steps: int, warmup: int = 5) -> float:
    """Images/s of plain training steps (SGD, cross-entropy) over an iterator of (x, y) batches."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    images = 0
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        images += len(y) if i >= warmup else 0
    return images / (time.perf_counter() - start)


def matmul_gflops(side: int = 2048, repeats: int = 10) -> float:
    """This CPU's fp32 matmul rate: the most a training step's FLOPs can run at here."""
    import torch

    a, b = torch.randn(side, side), torch.randn(side, side)
    torch.mm(a, b)
    return 2 * side ** 3 / statistics.median(timed(lambda: torch.mm(a, b), repeats)) / 1e9


def spent_by_kind(prof, kind_of) -> list[dict]:
    """A torch.profiler run's self CPU time by kind of operation, kind_of(key, input_shapes) naming the
    kind of each event (None: not counted), largest first."""
    totals: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        kind = kind_of(event.key, event.input_shapes)
        if kind is not None:
            totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())
    return [{"kind of operation": k, "self CPU ms": v / 1000, "share %": 100 * v / whole}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write(name: str, rows: list[dict], summary: list[str], extra: dict, tables: dict[str, list[dict]] | None = None,
          folder: Path = RESULTS) -> Path:
    """<folder>/<name>.md (a table a person reads, then any further titled tables) and .json (the raw
    figures), with command and machine; folder is benchmarks/results unless a smoke test says otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(), "git": _git(), **extra}
    (folder / f"{name}.json").write_text(json.dumps({"info": info, "rows": rows, "summary": summary, "tables": tables or {}}, indent=2))
    lines = [f"# {name}", "", f"Command: `{info['command']}`  ", f"Date: {info['date']}  ", f"Commit: {info['git']}  ",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info["machine"].items()), ""]
    lines += _table(rows)
    lines += ["", *[f"- {s}" for s in summary], ""]
    for title, table in (tables or {}).items():
        lines += [f"## {title}", "", *_table(table), ""]
    path = folder / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def _table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys), *("| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows)]


def _fmt(v) -> str:
    return f"{v:,.2f}" if isinstance(v, float) else str(v)


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
