"""Training to a wall-clock budget (`--time 3m`) instead of an epoch count.

No schedule can be stretched after the fact: warmup and decay are laid over a known number of steps.
So the budget is turned into epochs before training, from the speed of this machine measured on the
run's own model, data and augmentation: a few real training steps (their effect on the weights undone)
and a few validation batches. The final scoring (test split, test-time views) and the writing of the
bundle and report are kept out of the budget's share for epochs. After every epoch the plan is checked
against the clock; when the machine has slowed, the remaining epochs shrink so that the run still ends,
schedule decayed and scored, within the budget.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from imgclf.engine.norm_stats import CALIBRATION_IMAGES
from imgclf.engine.trial import kept_state

log = logging.getLogger("imgclf")
MEASURE_SHARE = 0.03  # of the budget spent measuring the step time, between MEASURE_MIN and MEASURE_MAX seconds
MEASURE_MIN, MEASURE_MAX = 1.0, 20.0
WARMUP_STEPS = 2  # first steps are slower (allocation, oneDNN kernel choice): not timed
FINISH_SECONDS = 2.0  # bundle, results.json and report beyond the scoring pass itself
SAFETY = 0.95  # share of the remaining budget planned for epochs: timing noise must not overrun it
# The most epochs a budget plans: beyond them more training has not paid, and a run that can afford more ends
# early instead. 4,000 Fashion-MNIST images scored 90.24% in 114 epochs (--time 3m) and 89.86% in 388 (--time
# 10m); the full set gained up to 58 (93.86%). benchmarks/time_to_accuracy.py --only budgets.
MAX_PLANNED_EPOCHS = 100


class TimeBudget:
    """The budget of one run, from the moment planning starts."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()
        self.step_s = self.eval_image_s = 0.0
        self.train_start = self.start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def plan(self, trainer) -> int:
        """Epochs that fit: measures the trainer's step and evaluation speed, leaves its state as it was."""
        self.step_s = _time_steps(trainer, min(MEASURE_MAX, max(MEASURE_MIN, MEASURE_SHARE * self.seconds)))
        self.eval_image_s = _time_eval(trainer)
        epoch = self.epoch_seconds(trainer)
        room = SAFETY * (self.seconds - self.elapsed() - self.finish_seconds(trainer))
        fit = max(1, math.floor(room / epoch))
        epochs = min(fit, MAX_PLANNED_EPOCHS)
        log.info(
            "time budget %s: a training step takes %.0f ms and an epoch about %.1f s here (%d steps%s); %d epoch%s fit, "
            "with %.0f s kept for the final scoring and the bundle%s",
            _text(self.seconds),
            1000 * self.step_s,
            epoch,
            len(trainer.train_loader),
            " and validation" if trainer.val_loader is not None else "",
            fit,
            "" if fit == 1 else "s",
            self.finish_seconds(trainer),
            f"; {MAX_PLANNED_EPOCHS} are planned, beyond which more training has not paid, so the run ends early" if epochs < fit else "",
        )
        if room < epoch:
            log.warning(
                "time budget %s is shorter than one epoch with the final scoring (about %.0f s): one epoch is trained "
                "and the run will overrun it",
                _text(self.seconds),
                epoch + self.finish_seconds(trainer),
            )
        return epochs

    def epoch_seconds(self, trainer) -> float:
        val = len(trainer.val_loader.split) * self.eval_image_s if trainer.val_loader is not None else 0.0
        norms = min(CALIBRATION_IMAGES, len(trainer.train_loader.split)) * self.eval_image_s  # the norms' statistics
        return len(trainer.train_loader) * self.step_s + val + norms

    def finish_seconds(self, trainer) -> float:
        scored = trainer.test_loader or trainer.val_loader
        views = 6 if trainer.tta else 1
        return FINISH_SECONDS + (len(scored.split) * self.eval_image_s * views if scored is not None else 0.0)

    def begin(self) -> None:
        """Training starts now: later epochs are judged by the wall time they really took."""
        self.train_start = time.perf_counter()

    def epochs_left(self, trainer, done: int) -> int | None:
        """After `done` epochs of this run: the epochs it may still train, when fewer than planned, else None."""
        if not done:
            return None
        epoch = max((time.perf_counter() - self.train_start) / done, self.epoch_seconds(trainer))
        room = self.seconds - self.elapsed() - self.finish_seconds(trainer)
        fit = max(0, math.floor(room / epoch))
        planned = trainer.config.train.epochs - trainer.epoch
        return fit if fit < planned else None


def _text(seconds: float) -> str:
    """The budget as --time spells it ("40s", "3m"); a share of one (a label check's fold) to 3 digits."""
    if seconds < 120:
        return f"{seconds:.3g}s"
    return f"{seconds / 60:.3g}m" if seconds < 7200 else f"{seconds / 3600:.3g}h"


def _time_steps(trainer, seconds: float) -> float:
    """Seconds per training step, over real batches for about `seconds`; the trainer is put back as it
    was (engine/trial.py), so the run starts as if nothing had happened."""
    steps, start = 0, None
    with kept_state(trainer):
        while start is None or time.perf_counter() - start < seconds:
            for x, y in trainer.train_loader:
                if steps == WARMUP_STEPS:
                    _sync(trainer.device)
                    start = time.perf_counter()
                trainer.train_step(x, y)
                steps += 1
                if start is not None and time.perf_counter() - start >= seconds:
                    break
        _sync(trainer.device)
        return (time.perf_counter() - start) / (steps - WARMUP_STEPS)


@torch.no_grad()
def _time_eval(trainer, batches: int = 3) -> float:
    """Seconds per image of evaluation (forward only, the evaluation batch size)."""
    loader = trainer.val_loader or trainer.test_loader
    if loader is None:
        return 0.0
    model = trainer.scored_model
    was_training = model.training
    model.eval()
    images, start = 0, None
    for i, (x, _) in enumerate(loader):
        if i == 1:
            _sync(trainer.device)
            start = time.perf_counter()
        model(x)
        images += len(x) if i >= 1 else 0
        if i >= batches:
            break
    model.train(was_training)
    _sync(trainer.device)
    if start is None or not images:  # a single batch: time it again
        start = time.perf_counter()
        model.eval()
        x = next(iter(loader))[0]
        model(x)
        model.train(was_training)
        return (time.perf_counter() - start) / len(x)
    return (time.perf_counter() - start) / images


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
