"""Work split into chunks over worker processes: decoding is CPU-bound Python, so threads would not help."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor


def worker_count(requested: int | None) -> int:
    return max(1, requested or os.cpu_count() or 1)


def iter_chunks(fn, jobs: list[tuple], workers: int, what: str, initializer=None):
    """fn(*job) for every job, yielded in order as each is ready, so a consumer can work meanwhile.

    initializer runs once in each worker process (never in this one, where workers == 1 runs the jobs).
    """
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=what, unit="chunk", disable=None, leave=False)
    try:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                yield fn(*job)
                bar.update()
            return
        # fork starts workers in milliseconds and needs no __main__ guard in user scripts; macOS cannot fork safely.
        ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer) as pool:
            futures = [pool.submit(fn, *job) for job in jobs]
            for fut in futures:
                yield fut.result()
                bar.update()
    finally:
        bar.close()


def run_chunks(fn, jobs: list[tuple], workers: int, what: str) -> list:
    """fn(*job) for every job, in order, over worker processes when it is worth starting them."""
    return list(iter_chunks(fn, jobs, workers, what))


def chunks(n: int, workers: int, size: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) ranges of `size` items, or about 16 per worker for load balance, 32 to 1024 each."""
    size = size or int(min(1024, max(32, n // (workers * 16) or 1)))
    return [(i, min(n, i + size)) for i in range(0, n, size)]
