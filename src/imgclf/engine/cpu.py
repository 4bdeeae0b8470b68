"""The CPU at hand: what its vector units offer, and how many of its cores other processes leave free.

Features: machines that look alike differ in what decides their speed (AVX2 only, or AVX-512 with bf16
and VNNI, or AMX), so every run and every benchmark records the model name and these flags, and figures
from different machines are never compared blind.

Free cores: torch's CPU kernels split each operation over its OpenMP threads and wait at a barrier for
the slowest. When another process holds a core, the thread that shares it runs only in the scheduler's
slices, and every one of the thousands of barriers a training step has waits for it: with 2 threads on 2
cores beside one busy process, small_resnet trained at batch 32 ran 4x slower than alone (684 against
2,700 images/s) and 7x beside a second training run, while 1 thread on the free core kept 1,933. So torch
gets as many threads as there are cores the others leave free, measured at the start and again every
few seconds as the run goes (a neighbour may come or go), never more than the cores this process may use.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from imgclf.data.parallel import usable_cpus

log = logging.getLogger("imgclf")

# The flags that decide a CPU's speed for this work: vector width, fused multiply-add, bf16 and int8 units.
_SPEED_FLAGS = ("avx", "amx", "fma")


@lru_cache(maxsize=1)
def features() -> dict:
    """{"cpu": model name, "flags": the speed-deciding flags, space-separated, "cores": usable cores,
    "kernels": the instruction set torch's kernels were chosen for (e.g. AVX512)}."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(_SPEED_FLAGS) or "vnni" in f or "bf16" in f]
            if cpu and flags:
                break
    except OSError:  # not Linux: the model name from platform, no flags
        pass
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return {"cpu": cpu, "flags": " ".join(sorted(set(flags))) or "unknown", "cores": usable_cpus(), "kernels": capability}


def has_bf16_units() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as torch itself detects it."""
    import torch

    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def threads_for(cores: int, others: float) -> int:
    """Threads for `cores` usable cores while other processes keep `others` cores busy: one per core they
    leave free, at least one. A core counts as taken once others use more than half of it."""
    return max(1, cores - int(others + 0.5))


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks so far of the CPUs this process may use, from /proc/stat; None off Linux.
    Steal counts as busy: on a virtual machine it is another guest on the same core."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else set()
    busy = total = 0
    for line in lines:
        name, *ticks = line.split()
        if not name.startswith("cpu") or name == "cpu" or (mine and name not in mine):
            continue
        values = [int(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def _own_ticks() -> float:
    """This process's CPU time (all its threads) in clock ticks."""
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


@dataclass
class _Sample:
    busy: int
    total: int
    own: float


def _sample() -> _Sample | None:
    jiffies = _busy_jiffies()
    return None if jiffies is None else _Sample(*jiffies, _own_ticks())


def others_between(a: _Sample, b: _Sample, cores: int) -> float:
    """Cores other processes kept busy between two samples: the CPUs' busy time less this process's own."""
    total = b.total - a.total
    if total <= 0:
        return 0.0
    others = (b.busy - a.busy) - (b.own - a.own)
    return min(float(cores), max(0.0, others / total * cores))


START_SAMPLE_S = 0.15  # the first look: long enough for 100 Hz ticks on each core, short beside a run's start


class ThreadShare:
    """torch's CPU threads kept to the cores other processes leave free: chosen at start(), then looked at
    again every `every_s` seconds from follow() (called between steps or batches, where changing the
    count is safe) and changed, with a line in the log, when the free cores change.

    fixed: a thread count the user gave (--threads): kept, never followed. cap: the most this process
    should use (a service's share when several worker processes split the cores); OMP_NUM_THREADS, when
    set, caps it too."""

    def __init__(
        self,
        fixed: int | None = None,
        cap: int | None = None,
        every_s: float = 5.0,
        what: str = "training",
        hint: str = "--threads fixes it",
    ):
        self.fixed, self.every_s, self.what, self.hint = fixed, every_s, what, hint
        self.cores = usable_cpus()
        self.cap = max(1, min(cap or self.cores, self.cores, _omp_threads() or self.cores))
        self.threads = fixed or self.cap
        self._last: _Sample | None = None
        self._at = 0.0

    def _choose(self, others: float) -> int:
        return min(self.cap, threads_for(self.cores, others))

    def start(self) -> str | None:
        """Set the threads; the line to say when the machine is busy (None when it is not, or fixed)."""
        import torch

        if self.fixed:
            torch.set_num_threads(self.fixed)
            return None
        first = _sample()
        time.sleep(START_SAMPLE_S if first is not None else 0.0)
        self._last, self._at = _sample(), time.monotonic()  # the first look's end is where follow() counts from
        others = None if first is None or self._last is None else others_between(first, self._last, self.cores)
        if others is not None:
            self.threads = self._choose(others)
        torch.set_num_threads(self.threads)
        if others is None or self.threads == self.cap:
            return None
        return (
            f"the machine is busy: other processes keep {others:.1f} of its {self.cores} cores busy; {self.what} uses "
            f"{_threads(self.threads)} (more would wait on each other), looked at again every {self.every_s:g} s; {self.hint}"
        )

    def follow(self) -> None:
        if self.fixed or self._last is None or time.monotonic() - self._at < self.every_s:
            return
        now = _sample()
        if now is None:
            return
        others = others_between(self._last, now, self.cores)
        self._last, self._at = now, time.monotonic()
        threads = self._choose(others)
        if threads != self.threads:
            import torch

            log.info(
                "other processes now keep %.1f of %d cores busy: %s goes from %s to %s",
                others,
                self.cores,
                self.what,
                _threads(self.threads),
                _threads(threads),
            )
            self.threads = threads
            torch.set_num_threads(threads)


def _omp_threads() -> int | None:
    """OMP_NUM_THREADS, when the user (or torchrun) set it: the most threads they want, kept as a cap."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"
