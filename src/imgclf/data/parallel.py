"""Work split into chunks over worker processes: decoding is CPU-bound Python, so threads would not help."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share), not the machine's
    count: the one count every thread and worker decision uses."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_count(requested: int | None) -> int:
    return max(1, requested or usable_cpus())


def pool_context():
    """fork starts workers in milliseconds and needs no __main__ guard in user scripts; macOS cannot fork safely."""
    return multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")


def iter_chunks(fn, jobs: list[tuple], workers: int, what: str, pool: ProcessPoolExecutor | None = None):
    """fn(*job) for every job, yielded in order as each is ready, so a consumer can work meanwhile.

    pool: the caller's executor (with its own initializer), used as it is and left open; without one, a
    pool of `workers` lives for this call (workers == 1 runs the jobs here).
    """
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=what, unit="chunk", disable=None, leave=False)
    try:
        if pool is None and (workers == 1 or len(jobs) == 1):
            for job in jobs:
                yield fn(*job)
                bar.update()
            return
        owned = pool is None
        pool = pool or ProcessPoolExecutor(max_workers=workers, mp_context=pool_context())
        try:
            futures = [pool.submit(fn, *job) for job in jobs]
            for fut in futures:
                yield fut.result()
                bar.update()
        finally:
            if owned:
                pool.shutdown(cancel_futures=True)
    finally:
        bar.close()


def run_chunks(fn, jobs: list[tuple], workers: int, what: str) -> list:
    """fn(*job) for every job, in order, over worker processes when it is worth starting them."""
    return list(iter_chunks(fn, jobs, workers, what))


def chunks(n: int, workers: int, size: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) ranges of `size` items, or about 16 per worker for load balance, 32 to 1024 each."""
    size = size or int(min(1024, max(32, n // (workers * 16) or 1)))
    return [(i, min(n, i + size)) for i in range(0, n, size)]
