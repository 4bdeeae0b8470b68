"""The run's callbacks on the loop's events (Lightning's habit): its files, its log line, early stopping,
the time budget; the training techniques are callbacks too (engine/techniques.py).

Each callback keeps its state in the checkpoint (state_dict / load_state_dict under its key), so that a
resumed run continues its early stopping count or its save clock where they stood. The ones that write
do so on rank 0 only; the decisions (stop, shrink to a time budget) are taken from figures every rank
shares, so every rank takes the same one.

The order of a run's callbacks is the order they act in: the run's files (checkpoints before the
metrics row, so that a row on disk always has its checkpoint behind it), then the log line, then the
decisions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

from imgclf.engine.checkpoint import deferred_interrupts, save_checkpoint
from imgclf.engine.metrics_log import append_row, rewrite

log = logging.getLogger("imgclf")


class Callback:
    """The loop's events, in the order they come, and a place in the checkpoint.

    A step: on_batch_start (may replace the inputs and targets), forward and backward, on_after_backward,
    the optimizer's step, on_optimizer_step (also for the steps lr-find and the time budget take outside
    the loop), then, in the loop, on_step_end. An epoch: on_epoch_start, its steps, on_validation_start
    (before the model is scored, also when there is no validation split), on_validation_end (the row has
    its figures), on_epoch_end. state_dict/load_state_dict keep a callback's own state under its key;
    on_save_checkpoint/on_load_checkpoint see the whole checkpoint (for state that has its own place there).
    """

    key = ""  # its state's name in the checkpoint; "" keeps none

    def on_fit_start(self, trainer) -> None:
        pass

    def on_epoch_start(self, trainer) -> None:
        pass

    def on_batch_start(self, trainer, x, y):
        return x, y

    def on_after_backward(self, trainer) -> None:
        pass

    def on_optimizer_step(self, trainer) -> None:
        pass

    def on_step_end(self, trainer) -> None:
        pass

    def on_validation_start(self, trainer) -> None:
        pass

    def on_validation_end(self, trainer, row: dict) -> None:
        pass

    def on_epoch_end(self, trainer, row: dict) -> None:
        pass

    def on_save_checkpoint(self, trainer, state: dict) -> None:
        pass

    def on_load_checkpoint(self, trainer, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class RunFiles(Callback):
    """The run directory (made at the first checkpoint, with the files waiting for it), best.pt with the
    weights the run keeps (when validation improved; every epoch with keep="last"), last.pt after every
    epoch and, with save_every, within epochs too; then the epoch's row of metrics.csv. Rank 0 only.

    save_every: a number of steps, or seconds (from a duration such as "10m"), between checkpoints inside
    an epoch; None: at the end of each epoch only.
    """

    key = "run_files"

    def __init__(self, save_every_steps: int | None = None, save_every_seconds: float | None = None):
        self.every_steps, self.every_seconds = save_every_steps, save_every_seconds
        self._last_save = time.monotonic()

    def on_fit_start(self, trainer) -> None:
        self._last_save = time.monotonic()
        if trainer.world.is_main and trainer.history and (trainer.run_dir / "metrics.csv").exists():
            rewrite(trainer.run_dir / "metrics.csv", trainer.history)  # rows of epochs lost to a kill go

    def on_step_end(self, trainer) -> None:
        if not trainer.world.is_main or trainer.batch_in_epoch >= trainer.batches_in_epoch:
            return
        due = (self.every_steps and trainer.step % self.every_steps == 0) or (
            self.every_seconds and time.monotonic() - self._last_save >= self.every_seconds
        )
        if due:
            with deferred_interrupts():
                trainer.make_run_dir()
                save_checkpoint(trainer.last_path, trainer.state(within_epoch=True))
            self._last_save = time.monotonic()

    def on_epoch_end(self, trainer, row: dict) -> None:
        if not trainer.world.is_main:
            return
        with deferred_interrupts():
            trainer.make_run_dir()
            if row.get("kept"):
                save_checkpoint(trainer.run_dir / "checkpoints" / "best.pt", trainer.best_state())
            save_checkpoint(trainer.last_path, trainer.state())
            append_row(trainer.run_dir / "metrics.csv", row)
        self._last_save = time.monotonic()


class EpochLog(Callback):
    """The epoch's line, and one more when training is visibly failing, with the likely fix: after the
    first epoch a training loss clearly above chance (10% over it), or a validation loss that explodes."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        epochs = trainer.config.train.epochs
        val_text = f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%" if "val_acc" in row else ""
        log.info(
            "epoch %d/%d  train loss %.4f acc %.2f%%%s  lr %.4g  %.1fs  %s img/s",
            row["epoch"],
            epochs,
            row["train_loss"],
            100 * row["train_acc"],
            val_text,
            row["lr"],
            row["seconds"],
            f"{row['images_per_s']:,.0f}",
        )
        self._warn_if_failing(trainer, row)

    @staticmethod
    def _warn_if_failing(trainer, row: dict) -> None:
        classes = trainer.data.num_classes
        chance = math.log(max(2, classes))
        lr = trainer.config.train.resolved_lr()
        if row["epoch"] == 1 and row["train_loss"] > 1.1 * chance:  # at chance, a first epoch of few steps may still be fine
            steps = len(trainer.train_loader)
            fix = (
                f"with {steps} step(s) an epoch it has had little chance to: lower --batch-size (now {trainer.config.train.batch_size})"
                if steps < 10
                else f"if it stays there, lower --lr (now {lr:g}) or raise --epochs"
            )
            log.warning(
                "epoch 1 ended with a training loss of %.2f, above chance (%.2f for %d classes): the model is not learning yet; %s",
                row["train_loss"],
                chance,
                classes,
                fix,
            )
        val_losses = [r["val_loss"] for r in trainer.history if "val_loss" in r]
        exploded = val_losses and (
            not math.isfinite(val_losses[-1])
            or val_losses[-1] > 3 * chance
            and (len(val_losses) == 1 or val_losses[-1] > 3 * min(val_losses[:-1]))
        )
        if exploded:
            log.warning(
                "validation loss %.1f in epoch %d has exploded (chance is %.2f): the learning rate is likely too "
                "high for this data; try --lr %g",
                val_losses[-1],
                row["epoch"],
                chance,
                lr / 10,
            )


class FollowFreeCores(Callback):
    """torch's CPU threads follow the cores other processes leave free (engine/cpu.py), looked at between
    steps: a neighbour that starts mid-run would otherwise slow every step several times over."""

    def __init__(self, share):
        self.share = share

    @classmethod
    def on_cpu(cls, config, what: str = "training") -> list[Callback]:
        """[the callback] for a run on a CPU, its threads set now (and said in one line when the machine is
        busy); [] on another device."""
        from imgclf.engine import cpu, hardware

        if hardware.pick_device(config.train.device).type != "cpu":
            return []
        share = cpu.ThreadShare(config.train.threads, what=what)
        line = share.start()
        if line:
            log.info(line)
        return [cls(share)]

    def on_step_end(self, trainer) -> None:
        self.share.follow()


class EarlyStopping(Callback):
    """Stop after `patience` epochs without a better validation accuracy."""

    key = "early_stop"

    def __init__(self, patience: int):
        self.patience, self.bad_epochs = patience, 0

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.bad_epochs = 0 if row.get("improved") else self.bad_epochs + 1
        if self.patience and self.bad_epochs >= self.patience:
            log.info(
                "early stop: no better validation accuracy for %d epochs (best %.2f%% at epoch %d)",
                self.bad_epochs,
                100 * trainer.top["val_acc"],
                trainer.top["epoch"],
            )
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.bad_epochs = int(state.get("bad_epochs", 0))


class KeepToBudget(Callback):
    """Fewer epochs when the machine has slowed, against a wall-clock budget (engine/budget.py): the
    schedule is shortened and its decay still completes. Every rank decides from rank 0's clock."""

    def __init__(self, budget):
        self.budget, self._start_epoch = budget, 0

    def on_fit_start(self, trainer) -> None:
        self._start_epoch = trainer.epoch
        self.budget.begin()

    def on_epoch_end(self, trainer, row: dict) -> None:
        left = trainer.world.from_main(self.budget.epochs_left(trainer, trainer.epoch - self._start_epoch))
        if left is None:
            return
        epochs = trainer.epoch + left
        log.warning(
            "time budget: the epochs take longer than measured; %d epoch%s instead of %d, the learning-rate schedule shortened to fit",
            epochs,
            "" if epochs == 1 else "s",
            trainer.config.train.epochs,
        )
        trainer.config = dataclasses.replace(trainer.config, train=dataclasses.replace(trainer.config.train, epochs=epochs))
        if trainer.world.is_main and (trainer.run_dir / "config.yaml").is_file():
            (trainer.run_dir / "config.yaml").write_text(trainer.config.to_yaml())
