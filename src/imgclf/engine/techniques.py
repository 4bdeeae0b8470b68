"""The training techniques as callbacks on the loop's events, each with its own state in the checkpoint:
mixing batches (mixup, cutmix), gradient clipping, the weight average, the head-only warm-up (freezing),
BatchNorm statistics measured again before validation (precise BN), and which epoch a run keeps.

The Trainer builds the ones its config asks for (`techniques`), before the run's own callbacks, so that
a technique has acted on a step or an epoch before the checkpoint and the log see it. Their order here is
the order they act in; resumes stay bit-exact because each acts at the point of the step it always did.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, cast

import torch

from imgclf.data.augment import mix
from imgclf.engine import hardware
from imgclf.engine.bundle import unwrap
from imgclf.engine.callbacks import Callback
from imgclf.engine.ema import WeightAverage
from imgclf.engine.norm_stats import CALIBRATION_IMAGES, batch_norms, recalibrate

if TYPE_CHECKING:
    from imgclf.engine.trainer import Trainer

log = logging.getLogger("imgclf")


def techniques(trainer: Trainer) -> list[Callback]:
    """The technique callbacks the trainer's config asks for, in the order they act."""
    t = trainer.config.train
    chosen: list[Callback] = []
    if t.freeze_epochs:
        chosen.append(FreezeBackbone(t.freeze_epochs, t.backbone_lr_scale))
    if t.mixup or t.cutmix:
        chosen.append(MixBatches(t.mixup, t.cutmix))
    if t.clip_grad:
        chosen.append(ClipGradients(t.clip_grad))
    if t.ema:
        chosen.append(WeightAveraging(trainer, t.ema_decay))
    if not t.frozen_norms:
        chosen.append(PreciseNorms())
    chosen.append(KeepEpoch("val_acc", keep=t.keep or "best"))
    return chosen


class FreezeBackbone(Callback):
    """The first `epochs` epochs train the head (and the normalisation layers) alone, then everything: a
    new head learns first without pulling pretrained features towards its random start."""

    def __init__(self, epochs: int, backbone_lr_scale: float):
        self.epochs, self.backbone_lr_scale = epochs, backbone_lr_scale
        self._frozen: bool | None = None  # what the log last said

    def on_epoch_start(self, trainer: Trainer) -> None:
        from imgclf.models.transfer import freeze_backbone, unfreeze

        epoch = trainer.epoch
        frozen = epoch < self.epochs
        freeze_backbone(trainer.model) if frozen else unfreeze(trainer.model)
        for p in trainer.fixed:
            p.requires_grad_(False)
        if frozen == self._frozen:
            return
        params = list(trainer.model.parameters())
        training = sum(p.numel() for p in params if p.requires_grad)
        if frozen:
            log.info(
                "epoch %d: backbone frozen until epoch %d; %s of %s parameters train (the head and the normalisation layers)",
                epoch + 1,
                self.epochs,
                f"{training:,}",
                f"{sum(p.numel() for p in params):,}",
            )
        else:
            log.info(
                "epoch %d: backbone unfrozen; all %s parameters train%s",
                epoch + 1,
                f"{training:,}",
                f", the backbone at {self.backbone_lr_scale:g} x lr" if self.backbone_lr_scale != 1 else "",
            )
        self._frozen = frozen


class MixBatches(Callback):
    """mixup and cutmix on each training batch, drawn from a generator seeded by (seed, step, rank), so
    that a resumed run mixes its steps exactly as the uncut run did."""

    def __init__(self, mixup: float, cutmix: float):
        self.mixup, self.cutmix = mixup, cutmix
        self._gen: torch.Generator | None = None

    def on_batch_start(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._gen is None:
            self._gen = torch.Generator(device=trainer.device)
        self._gen.manual_seed((trainer.config.data.seed * 1_000_003 + trainer.step * 7_919 + trainer.world.rank) % 2**63)
        return mix(x, y, trainer.data.num_classes, self.mixup, self.cutmix, self._gen)


class ClipGradients(Callback):
    """The gradient's norm clipped to `max_norm` before the optimizer steps (unscaled first under float16)."""

    def __init__(self, max_norm: float):
        self.max_norm = max_norm

    def on_after_backward(self, trainer: Trainer) -> None:
        trainer.scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), self.max_norm)


class WeightAveraging(Callback):
    """An exponential moving average of the weights, updated after every optimizer step; validation scores
    it and best.pt keeps it (trainer.scored_model). Saved as the checkpoint's "ema", as before callbacks."""

    def __init__(self, trainer: Trainer, decay: float):
        self.average = WeightAverage(trainer.model, decay)

    def on_optimizer_step(self, trainer: Trainer) -> None:
        self.average.update(trainer.model)

    def on_save_checkpoint(self, trainer: Trainer, state: dict) -> None:
        state["ema"] = self.average.state_dict()

    def on_load_checkpoint(self, trainer: Trainer, state: dict) -> None:
        if "ema" in state:
            self.average.load_state_dict(state["ema"])
        else:  # a run saved before its average existed starts the average from its weights
            self.average.module.load_state_dict(state["model"])


class PreciseNorms(Callback):
    """BatchNorm statistics of the scored weights measured on training images before each validation
    (engine/norm_stats.py), in eager mode (a compiled graph would be built again for it), then averaged over
    the ranks so that every rank validates, and rank 0 saves, the same statistics. Left out with frozen
    norms, which keep the statistics they have."""

    def on_validation_start(self, trainer: Trainer) -> None:
        model = unwrap(trainer.scored_model)
        sample = trainer.train_loader.sample(CALIBRATION_IMAGES)
        if recalibrate(model, sample, lambda: hardware.autocast(trainer.device, trainer.dtype)) and trainer.world.distributed:
            for norm in batch_norms(model):
                for buf in (cast(torch.Tensor, norm.running_mean), cast(torch.Tensor, norm.running_var)):  # tracked: tensors
                    buf.copy_(trainer.world.sum(buf.clone()) / trainer.world.world_size)


class KeepEpoch(Callback):
    """What "best" means and which epoch the run keeps: the best value of `metric` in the direction `mode`
    ("max": validation accuracy, the default; "min" for a loss), taken from the training figures when there
    is no validation split (train_acc for val_acc), and with keep="last" every epoch. The figures are sums
    over every rank, so every rank takes the same decision. Marks the epoch's row ("improved", "kept") for
    the checkpoint files and early stopping that act after it. best and top hold {metric: value, "epoch"}."""

    def __init__(self, metric: str = "val_acc", keep: str = "best", mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: 'max' (higher is better) or 'min'")
        self.metric, self.keep, self.mode = metric, keep, mode
        start = -1.0 if mode == "max" and metric.endswith("acc") else -math.inf if mode == "max" else math.inf
        self.best = {metric: start, "epoch": 0}  # the kept epoch: best.pt, the bundle, results.json's best_epoch
        self.top = {metric: start, "epoch": 0}  # the best value (the kept one, unless keep="last")

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def on_validation_end(self, trainer: Trainer, row: dict) -> None:
        value = float(row[self.metric] if self.metric in row else row[self.metric.replace("val_", "train_", 1)])
        row["improved"] = self._better(value, self.top[self.metric])
        if row["improved"]:
            self.top = {self.metric: value, "epoch": row["epoch"]}
        row["kept"] = row["improved"] or self.keep == "last"
        if row["kept"]:
            self.best = {self.metric: value, "epoch": row["epoch"]}

    def on_save_checkpoint(self, trainer: Trainer, state: dict) -> None:
        state["best"], state["top"] = dict(self.best), dict(self.top)

    def on_load_checkpoint(self, trainer: Trainer, state: dict) -> None:
        self.best = dict(state["best"])
        self.top = dict(state.get("top", state["best"]))  # checkpoints made before keep=last kept the top epoch
