"""Trials on the run train() would make, which keep nothing: the learning-rate range test (lr_find) and
the largest batch that fits a GPU (batch_find)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from imgclf.api import drop_duplicates, load_plan_data
from imgclf.config import Config
from imgclf.engine import distributed, recipe
from imgclf.engine.trainer import Trainer
from imgclf.errors import ImgclfError
from imgclf.preflight import RunPlan, plan_run

log = logging.getLogger("imgclf")


@dataclass
class LrFind:
    """What a learning-rate range test found (fastai's lr_find): every step's lr and loss, the suggestion
    and the plot."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float  # where the smoothed loss falls fastest
    min_loss_lr: float  # the lr of the lowest smoothed loss, / 10
    recipe_lr: float  # what train() would use with the same settings
    steps: int  # asked for; fewer ran when the loss diverged
    plot: Path | None

    def summary(self) -> str:
        stop = ", then the loss diverged" if len(self.lrs) < self.steps else ""
        lines = [
            f"lr range test: {self.lrs[0]:.2g} to {self.lrs[-1]:.2g}, {len(self.lrs)} of {self.steps} steps{stop}",
            f"suggested lr: {self.suggestion:.2g} (steepest fall of the smoothed loss; the lowest loss's lr / 10 is "
            f"{self.min_loss_lr:.2g}); train with it: --lr {self.suggestion:.2g}",
            f"the recipe's lr: {self.recipe_lr:g}",
        ]
        return "\n".join(lines + ([f"plot: {self.plot}"] if self.plot else []))

    def __repr__(self) -> str:
        return f"LrFind(suggestion {self.suggestion:.2g}, recipe lr {self.recipe_lr:g}, {len(self.lrs)} of {self.steps} steps)"


def lr_find(
    data=None,
    config: Config | None = None,
    *,
    plot: str | Path | None = "lr_find.png",
    start: float | None = None,
    end: float | None = None,
    steps: int | None = None,
    **settings,
) -> LrFind:
    """fastai's learning-rate range test on the run train() would make with these settings: up to `steps`
    steps with the lr growing exponentially from start to end, stopped once the loss diverges; nothing is
    kept (no run directory, the weights put back). start, end, steps: None for 1e-6, 1 and 100
    (engine/lr_find.py); plot: a PNG of loss against lr (None: no plot)."""
    from imgclf.engine import lr_find as finder
    from imgclf.engine.lr_find import check_range, range_test
    from imgclf.logs import ensure_console

    ensure_console()
    start, end = finder.START if start is None else start, finder.END if end is None else end
    steps = finder.STEPS if steps is None else steps
    check_range(start, end, steps)
    trainer = _trial_trainer(_trial_plan(data, config, settings))
    curve = range_test(trainer, start, end, steps)
    recipe_lr = trainer.config.train.resolved_lr()
    suggestion = curve.steepest()
    if plot is not None:
        from imgclf.report.plots import lr_range

        plot = lr_range(curve.lrs, curve.losses, curve.smoothed, suggestion, recipe_lr, Path(plot))
    return LrFind(curve.lrs, curve.losses, curve.smoothed, suggestion, curve.min_loss_lr(), recipe_lr, steps, plot)


def batch_find(data=None, config: Config | None = None, **settings):
    """The largest training batch of the run train() would make that fits in GPU memory, and a size to train
    with (a BatchFit); nothing is kept. CUDA only: elsewhere the batch size is not a memory question."""
    from imgclf.engine import hardware
    from imgclf.engine.batch_find import check_gpu, largest_batch
    from imgclf.logs import ensure_console

    ensure_console()
    plan = _trial_plan(data, config, settings)
    check_gpu(hardware.pick_device(plan.config.train.device))  # before any image is decoded
    return largest_batch(_trial_trainer(plan))


def _trial_plan(data, config: Config | None, settings: dict) -> RunPlan:
    """A checked request for a trial: --name and --force are left out, as a trial makes no run directory
    and a name already taken must not stop it. One process: a trial measures this process's steps."""
    if distributed.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ImgclfError("lr-find and batch-find run in one process; start them without torchrun (or --nproc).")
    return plan_run(data, config, None, {k: v for k, v in settings.items() if k not in ("name", "force")})


def _trial_trainer(plan: RunPlan) -> Trainer:
    """The trainer train() would build for this plan, never fit: its run directory is made only at the end
    of a first epoch, so it is never made."""
    data_obj = load_plan_data(plan)
    config, notes = recipe.resolve(plan.config, data_obj)
    for note in notes:
        log.info(note)
    data_obj, _ = drop_duplicates(data_obj, config)
    return Trainer(data_obj, config, plan.run_dir)
