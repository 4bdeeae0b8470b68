"""The largest training batch that fits in GPU memory, found with real steps of the real model (its
optimizer state, precision and memory format included), and one to train with that leaves room."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from imgclf.engine.trial import put_back, snapshot
from imgclf.errors import ImgclfError

MARGIN = 0.8  # the share of the largest fitting batch a suggestion may use
REFINE = 3  # halvings of the gap between the largest batch that fit and the first that did not


@dataclass
class BatchFit:
    """What a memory probe found; `tried` maps each batch size to its peak bytes, or None when it ran out."""

    start: int  # the recipe's batch size
    largest: int
    cap: int  # the training set: no batch can be larger
    tried: dict[int, int | None]
    total_bytes: int

    @property
    def suggestion(self) -> int:
        """The largest power of two at or below 80% of the largest batch that fit. The largest itself has no
        room left for what one probe step does not show (the allocator's fragmentation over many steps,
        the validation pass, a weight average, another process on the GPU); a power of two keeps the
        shapes tensor cores like and runs comparable."""
        if self.largest == self.cap:  # memory does not bind: the recipe's size, chosen for steps per epoch, stands
            return self.start
        batch = 1
        while batch * 2 <= MARGIN * self.largest:
            batch *= 2
        return batch

    def summary(self) -> str:
        tried = ", ".join(f"{b} {'out of memory' if p is None else _gib(p)}" for b, p in sorted(self.tried.items()))
        if self.largest == self.cap:
            verdict = (
                f"every batch up to the whole training set ({self.cap} images) fits: memory does not limit the batch "
                f"here; keep the recipe's {self.start}"
            )
        else:
            verdict = (
                f"largest that fit: {self.largest}; suggested: --batch-size {self.suggestion} (the largest power of two "
                f"at or below {MARGIN:.0%} of it, room for what one step does not show)"
            )
        return "\n".join(
            [f"batch sizes tried (peak memory, of {_gib(self.total_bytes)}): {tried}", verdict, f"the recipe's batch size: {self.start}"]
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_gpu(device: torch.device) -> None:
    if device.type != "cuda":
        raise ImgclfError(
            f"batch-find measures GPU memory and this run's device is {device.type}: on a CPU (or MPS) the batch "
            "size is chosen for steps per epoch, not memory, so keep the recipe's or set --batch-size yourself."
        )


def largest_batch(trainer) -> BatchFit:
    """Double the batch from the recipe's while a step fits (halve first if even that one does not), then
    narrow the gap to the first that ran out; the trainer's state is put back after every trial."""
    check_gpu(trainer.device)
    x, y = next(iter(trainer.train_loader))
    fit = BatchFit(trainer.config.train.batch_size, 0, len(trainer.data.train), {}, torch.cuda.mem_get_info(trainer.device)[1])
    saved = snapshot(trainer)
    batch = fit.start
    while not _fits(trainer, saved, x, y, batch, fit.tried) and batch > 1:
        batch //= 2
    if fit.tried[batch] is None:
        raise ImgclfError(f"even a batch of 1 ran out of GPU memory ({trainer.arch.name}); try a smaller --image-size or --model.")
    fit.largest = batch
    while fit.largest < fit.cap and _fits(trainer, saved, x, y, min(2 * fit.largest, fit.cap), fit.tried):
        fit.largest = min(2 * fit.largest, fit.cap)
    failed = min((b for b, peak in fit.tried.items() if peak is None and b > fit.largest), default=None)
    for _ in range(REFINE if failed else 0):
        assert failed is not None  # the loop runs only when a larger batch failed
        middle = (fit.largest + failed) // 2
        if middle == fit.largest:
            break
        if _fits(trainer, saved, x, y, middle, fit.tried):
            fit.largest = middle
        else:
            failed = middle
    return fit


def _fits(trainer, saved: dict, x: torch.Tensor, y: torch.Tensor, batch: int, tried: dict) -> bool:
    """Two steps at this batch size (the second with the first's gradients and optimizer state alive, as
    every later step has them); records the peak bytes, or None when it ran out of memory."""
    if batch in tried:
        return tried[batch] is not None
    rows = torch.arange(batch, device=x.device) % len(x)  # real images, repeated when the batch is bigger than one
    xb, yb = x[rows], y[rows]
    if trainer.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    torch.cuda.reset_peak_memory_stats(trainer.device)
    try:
        for _ in range(2):
            trainer.train_step(xb, yb)
        torch.cuda.synchronize(trainer.device)
        tried[batch] = torch.cuda.max_memory_allocated(trainer.device)
    except torch.OutOfMemoryError:
        tried[batch] = None
    del xb, yb
    put_back(trainer, saved)
    gc.collect()
    torch.cuda.empty_cache()
    return tried[batch] is not None
