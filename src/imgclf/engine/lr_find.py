"""fastai's learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's `lr_find`): train a
few steps of the real setup while the learning rate grows exponentially, and read a good peak lr off the
loss curve. The weights and the optimizer are put back afterwards, so the trainer can still fit().
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from imgclf.engine.trial import kept_state
from imgclf.errors import ImgclfError

START, END, STEPS = 1e-6, 1.0, 100
BETA = 0.98  # fastai's smoothing: the loss averaged over about the last 50 steps
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum: the lr is past any use
SKIP_END = 5  # the last points climb towards divergence; the suggestion never comes from them


@dataclass
class LrCurve:
    """What a range test saw: the lr of every step, its loss and the smoothed loss."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    start: float
    end: float
    steps: int  # asked for; len(lrs) is what ran before the loss diverged

    @property
    def stopped_early(self) -> bool:
        return len(self.lrs) < self.steps

    def _usable(self) -> range:
        """The points a suggestion may come from: not the first tenth (the smoothed average is still
        warming up) nor the last few (already diverging)."""
        first = max(1, self.steps // 10)
        last = len(self.lrs) - SKIP_END
        if last - first < 3:
            raise ImgclfError(
                f"the loss diverged after {len(self.lrs)} of {self.steps} steps, too few to read a learning rate "
                f"from (starting at {self.start:.2g}); lower --start or raise --steps."
            )
        return range(first, last)

    def steepest(self) -> float:
        """The lr where the smoothed loss falls fastest per log-step of lr (fastai's 'steep').

        Chosen over fastai's 'valley' because it reads off one rule a user can check on the plot, and
        on the smoothed curve it is not fooled by single noisy batches; it is a lr at which the model
        is clearly learning, well before the loss turns up, which is what a peak lr should be. The fall
        is measured across a tenth of the steps, not between neighbours: in a short test the first
        points wobble by more than a neighbour-to-neighbour fall, and a wobble there suggested 9e-5
        where the loss really falls from 5e-4 on (batches of 16, 30 steps).
        """
        usable = self._usable()
        span = min(max(1, self.steps // 10), len(usable) - 1)
        log_lrs = [math.log(lr) for lr in self.lrs]
        slopes = {i: (self.smoothed[i + span] - self.smoothed[i]) / (log_lrs[i + span] - log_lrs[i]) for i in usable[:-span]}
        i = min(slopes, key=cast(Callable[[int], float], slopes.get))  # every key is in slopes: never None
        return math.exp((log_lrs[i] + log_lrs[i + span]) / 2)  # the middle of the steepest stretch

    def min_loss_lr(self) -> float:
        """The lr of the lowest smoothed loss, divided by 10: fastai v1's rule of thumb, a lr one decade
        below where the loss stops improving."""
        usable = self._usable()
        return self.lrs[min(usable, key=lambda i: self.smoothed[i])] / 10


def check_range(start: float, end: float, steps: int) -> None:
    """Refuse a range that cannot be tested, before any data is loaded."""
    if not 0 < start < end:
        raise ImgclfError(f"--start {start:g} and --end {end:g}: the range must grow from a positive start; e.g. --start 1e-6 --end 1.")
    if steps < 10:
        raise ImgclfError(f"--steps {steps}: too few to see the loss fall and rise; pass at least 10 (100 is usual).")


def _batches(loader):
    """Training batches for as long as asked: the loader's epochs one after another."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def range_test(trainer, start: float = START, end: float = END, steps: int = STEPS) -> LrCurve:
    """Train up to `steps` steps with the lr growing from start to end, each param group at its own share
    of it (its "scale", as the schedule sets it); stops once the smoothed loss diverges."""
    check_range(start, end, steps)
    curve = LrCurve([], [], [], start, end, steps)
    average, best = 0.0, math.inf
    with kept_state(trainer):
        trainer.model.train()
        for i, (x, y) in zip(range(steps), _batches(trainer.train_loader)):
            lr = start * (end / start) ** (i / (steps - 1))
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr * group.get("scale", 1.0)
            _, loss = trainer.train_step(x, y)
            loss = loss.item()
            if not math.isfinite(loss):
                break
            average = BETA * average + (1 - BETA) * loss
            smooth = average / (1 - BETA ** (i + 1))  # bias correction: the average starts at 0
            curve.lrs.append(lr)
            curve.losses.append(loss)
            curve.smoothed.append(smooth)
            best = min(best, smooth)
            if smooth > DIVERGED * best:
                break
    return curve
