"""The training loop every tutorial writes by hand, done once: epochs of steps on one process or many
(DistributedDataParallel under torchrun), resumable from any epoch or, with save_every, from within one.

What happens at the end of a step or an epoch (checkpoints, the metrics row, the log line, early
stopping, a time budget) is a callback (engine/callbacks.py); the scoring, the bundle and the report
come after training, in imgclf.api. This module imports nothing above the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.config import Config
from imgclf.data.augment import test_time_views
from imgclf.data.imageset import ImageData
from imgclf.data.loader import DeviceLoader
from imgclf.engine import hardware
from imgclf.engine.bundle import unwrap
from imgclf.engine.callbacks import Callback
from imgclf.engine.checkpoint import rng_state, set_rng_state
from imgclf.engine.distributed import SINGLE, World, device_for
from imgclf.engine.ema import WeightAverage
from imgclf.engine.network import build_network, class_weights
from imgclf.engine.norm_stats import batch_norms
from imgclf.engine.schedule import lr_factor
from imgclf.engine.validation import evaluate_loader
from imgclf.errors import ImgclfError
from imgclf.preprocessing import Preprocessing

if TYPE_CHECKING:
    pass

log = logging.getLogger("imgclf")
FINITE_CHECK_EVERY = {"cpu": 1}  # steps between non-finite checks; a check costs a sync on a GPU
DEFAULT_FINITE_CHECK = 20


class Trainer:
    """One run's training: set up from the config (every setting decided, engine/recipe.py), then fit()
    epoch by epoch, the callbacks acting after each step and epoch.

    world: this process's place in a data-parallel job (engine/distributed.py); each rank trains on its
    shard of every epoch and the figures of an epoch are summed over all ranks. The run directory is
    made by rank 0 when the first checkpoint is written, with the files in `pending` (config.yaml,
    run.json, ...): a run that fails before it has an epoch to keep leaves nothing behind.
    """

    def __init__(
        self,
        data: ImageData,
        config: Config,
        run_dir: Path,
        *,
        replace: bool = False,
        world: World = SINGLE,
        callbacks: Sequence[Callback] = (),
        files: dict[str, str] | None = None,
    ):
        from imgclf.models.transfer import freeze_early_layers, param_groups

        t = config.train
        self.config, self.data, self.run_dir, self.world = config, data, run_dir, world
        self.pending: dict[str, str] = dict(files or {})  # file name -> text, written when the run directory is made
        self.replace = replace
        self.device = device_for(world, hardware.pick_device(t.device))
        self.dtype = hardware.pick_precision(t.precision, self.device, pretrained=bool(t.pretrained or t.weights or t.init_from))
        self.channels_last = hardware.use_channels_last(t.channels_last, self.device)
        torch.manual_seed(config.data.seed)  # the same initial weights on every rank
        model, self.arch = build_network(config, data)
        if world.distributed and t.sync_bn:
            if self.device.type != "cuda":
                raise ImgclfError(
                    "--sync-bn needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only); leave it out on CPUs, where "
                    "BatchNorm statistics are measured again and averaged over the processes before each validation."
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.fixed = freeze_early_layers(model, t.freeze_stride or 0)  # kept at their pretrained weights throughout
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        if world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:
            self.net = cast(nn.Module, torch.compile(self.net))  # a module compiles to an OptimizedModule, a Module
        if world.rank:
            torch.manual_seed(config.data.seed + world.rank)  # dropout and the like differ between ranks
        self.base_lr = t.resolved_lr()
        groups = param_groups(self.model, self.base_lr, t.backbone_lr_scale, t.resolved_weight_decay(), t.decay_norms)
        for g in groups:
            g["scale"] = g["lr"] / self.base_lr
        self.optimizer = self._optimizer(groups)
        self.scaler = hardware.grad_scaler(self.device, self.dtype)
        shard: dict[str, Any] = dict(rank=world.rank, world_size=world.world_size)
        self.preprocessing = Preprocessing(
            data.channels,
            cast("tuple[int, int]", tuple(data.image_size)),
            config.data.resize,
            tuple(data.mean),
            tuple(data.std),
            **config.data.framing(),
        )
        assert t.batch_size is not None  # recipe.resolve decided it
        loader_args: dict[str, Any] = dict(
            mean=self.preprocessing.mean, std=self.preprocessing.std, device=self.device, channels_last=self.channels_last
        )
        self.train_loader = DeviceLoader(
            data.train,
            t.batch_size,
            train=True,
            augment=config.data.augment if t.augment else None,
            hflip_default=data.hflip,
            seed=config.data.seed,
            sampler=t.sampler,
            drop_last=len(data.train) > t.batch_size * world.world_size,
            **shard,
            **loader_args,
        )
        self.class_weights = class_weights(data.train.labels, data.num_classes, self.device) if t.class_weights == "balanced" else None
        self.compile_seconds = 0.0
        # Validation is shared out between the ranks, each image scored once; the test split is scored after
        # training, whole, by rank 0 (imgclf.api).
        self.eval_batch = hardware.eval_batch_size(self.preprocessing.shape)
        self.val_loader = DeviceLoader(data.val, self.eval_batch, **shard, **loader_args) if data.val is not None else None
        self.test_loader = DeviceLoader(data.test, self.eval_batch, **loader_args) if data.test is not None and data.test.labeled else None
        self.epoch, self.step = 0, 0
        self.batch_in_epoch, self.batches_in_epoch = 0, len(self.train_loader)
        self._partial: dict | None = None  # the sums of an epoch resumed from within
        self.history: list[dict] = []
        self.should_stop = False
        from imgclf.engine.techniques import KeepEpoch, WeightAveraging, techniques

        # The techniques first: a step or an epoch is done with before the run's files and log see it.
        self.callbacks = [*techniques(self), *callbacks]
        self._keep = next(cb for cb in self.callbacks if isinstance(cb, KeepEpoch))
        self._average = next((cb for cb in self.callbacks if isinstance(cb, WeightAveraging)), None)

    def _optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        t = self.config.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=self.base_lr, momentum=t.momentum, nesterov=t.momentum > 0, weight_decay=t.resolved_weight_decay()
            )
        cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=self.base_lr, weight_decay=t.resolved_weight_decay())

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def ema(self) -> WeightAverage | None:
        """The weight average when `ema` is on (engine/techniques.py WeightAveraging)."""
        return self._average.average if self._average is not None else None

    @property
    def best(self) -> dict:
        """The kept epoch and its metric (engine/techniques.py KeepEpoch decides)."""
        return self._keep.best

    @best.setter
    def best(self, value: dict) -> None:
        self._keep.best = dict(value)

    @property
    def top(self) -> dict:
        """The epoch of the highest metric (the kept one, unless keep="last")."""
        return self._keep.top

    @property
    def scored_model(self) -> nn.Module:
        """What validation scores and best.pt keeps: the weight average when it is on. Never the DDP
        wrapper: its forward is a collective, and the ranks' validation shards may differ by a batch."""
        if self.ema is not None:
            return self.ema.module
        return self.model if self.world.distributed else self.net

    def make_run_dir(self) -> None:
        """The run directory, with the files waiting for it, when the first checkpoint is written (rank 0)."""
        if not self.pending:
            return
        from imgclf.engine.rundir import make_run_dir

        made = make_run_dir(self.run_dir, self.replace)
        if made != self.run_dir:
            log.warning("run directory %s was taken meanwhile; this run is in %s", self.run_dir, made)
            self.run_dir = made
        for name, text in self.pending.items():
            (self.run_dir / name).write_text(text)
        self.pending = {}

    def state(self, within_epoch: bool = False) -> dict:
        """Everything a resume needs, tensors and plain containers only. within_epoch: a checkpoint in the
        middle of an epoch, with how far the epoch had got and its sums so far."""
        state = {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": list(self.history),
            "rng": rng_state(),
            "world_size": self.world.world_size,
            "batch_size": self.config.train.batch_size,
            "callbacks": {cb.key: cb.state_dict() for cb in self.callbacks if cb.key},
        }
        for cb in self.callbacks:
            cb.on_save_checkpoint(self, state)
        if within_epoch:  # this rank's sums: rank 0 writes, and a resumed epoch's figures are its own (see _epoch)
            state["within_epoch"] = {
                "batches": self.batch_in_epoch,
                "served": self.train_loader.served(self.batch_in_epoch),
                **self._sums_so_far(),
            }
        return state

    def best_state(self) -> dict:
        return {"model": unwrap(self.scored_model).state_dict(), "epoch": self.epoch, "best": dict(self.best)}

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: at the end of its epoch, or within it (with the same world size and
        batch exactly as the epoch would have gone on; with others, over the images it had not reached)."""
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        for cb in self.callbacks:
            cb.on_load_checkpoint(self, state)
        self.history = [dict(r) for r in state["history"]]
        saved_callbacks = dict(state.get("callbacks", {}))
        if "early_stop" in state and "early_stop" not in saved_callbacks:  # checkpoints made before callbacks
            saved_callbacks["early_stop"] = state["early_stop"]
        for cb in self.callbacks:
            if cb.key in saved_callbacks:
                cb.load_state_dict(saved_callbacks[cb.key])
        if self.world.is_main:
            set_rng_state(state["rng"])
        else:  # rank 0's random state is the one saved; the others take one of their own
            torch.manual_seed(self.config.data.seed + self.world.rank * 1_000_003 + self.step)
        within = state.get("within_epoch")
        if within:
            self.train_loader.set_epoch(self.epoch)
            self.train_loader.resume_within_epoch(
                within["served"],
                int(state.get("world_size", 1)),
                int(cast(int, state.get("batch_size") or self.config.train.batch_size)),  # recipe.resolve decided it
                int(within["batches"]),
            )
            self._partial = {k: v for k, v in within.items() if k != "served"}
            if self.world.distributed:  # rank 0's sums stand for its own shard; the others start theirs anew
                scale = 1.0 if self.world.is_main else 0.0
                self._partial.update({k: type(self._partial[k])(self._partial[k] * scale) for k in ("loss_sum", "correct", "seen")})

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> None:
        t = self.config.train
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.epoch < cast(int, self.config.train.epochs) and not self.should_stop:  # recipe.resolve decided it
                row = self._epoch()
                self.epoch += 1
                self.history.append(row)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, row)
        except KeyboardInterrupt:
            if self.world.is_main and self.last_path.is_file():
                log.warning(
                    "interrupted in epoch %d; %s holds the last checkpoint: resume with: imgclf train --resume %s",
                    self.epoch + 1,
                    self.last_path,
                    self.run_dir,
                )
            elif self.world.is_main:
                log.warning("interrupted in epoch 1, before any epoch completed: nothing was saved")
            raise
        except torch.OutOfMemoryError:
            advice = hardware.out_of_memory_advice(
                self.device, cast(int, t.batch_size), self.arch.name, self.preprocessing.shape, self.dtype
            )
            raise ImgclfError(advice) from None

    def _set_lr(self, progress: float) -> float:
        """The schedule at `progress` epochs: a function of how far training is, so that a run resumed
        in another number of processes (other steps an epoch) keeps its place in it."""
        t = self.config.train
        per_epoch = max(1, len(self.train_loader))
        epochs = cast(int, t.epochs)  # recipe.resolve decided it
        lr = self.base_lr * lr_factor(t.schedule, progress * per_epoch, epochs * per_epoch, t.resolved_warmup())
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("scale", 1.0)
        return lr

    def _sums_so_far(self) -> dict:
        return {
            "loss_sum": float(self._loss_sum.item()),
            "correct": int(self._correct.item()),
            "seen": self._seen,
            "seconds": self._seconds_before + time.perf_counter() - self._start,
            "fraction": self._fraction(),
        }

    def _fraction(self) -> float:
        """The share of this epoch served so far, all ranks together: what the schedule goes by. An epoch
        resumed over what was left (another world or batch) counts its share from where it was cut."""
        done = self.batch_in_epoch / max(1, self.batches_in_epoch)
        return done if not self._fraction_before else self._fraction_before + (1 - self._fraction_before) * done

    def _epoch(self) -> dict:
        from tqdm import tqdm

        t = self.config.train
        for cb in self.callbacks:
            cb.on_epoch_start(self)
        self.model.train()
        if t.frozen_norms:  # their pretrained statistics, in training as in evaluation (the probe's head was fitted on those)
            for norm in batch_norms(self.model):
                norm.eval()
        partial, self._partial = self._partial or {}, None
        if not partial:
            self.train_loader.set_epoch(self.epoch)
        self._first_batch, self.batches_in_epoch = self.train_loader.batches_left()
        # Resumed exactly (same world and batch), the epoch's batch numbers go on from where they were;
        # over what was left, they start again at 0 and the share already served is kept apart.
        self.batch_in_epoch = self._first_batch
        self._fraction_before = 0.0 if self._first_batch else float(partial.get("fraction", 0.0))
        self._loss_sum = torch.tensor(float(partial.get("loss_sum", 0.0)), device=self.device)
        self._correct = torch.tensor(int(partial.get("correct", 0)), device=self.device, dtype=torch.long)
        self._seen, self._seconds_before = int(partial.get("seen", 0)), float(partial.get("seconds", 0.0))
        self._start = time.perf_counter()
        check_every = FINITE_CHECK_EVERY.get(self.device.type, DEFAULT_FINITE_CHECK)
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{t.epochs}",
            unit="batch",
            leave=False,
            disable=None if self.world.is_main else True,
            total=self.batches_in_epoch - self._first_batch,
        )
        lr = self.base_lr
        for x, y in bar:
            lr = self._set_lr(self.epoch + self._fraction())
            first_step = time.perf_counter() if self.step == 0 and t.compile else None
            out, loss = self.train_step(x, y)
            if first_step is not None:
                self.compile_seconds = time.perf_counter() - first_step
                log.info("torch.compile: the first step took %.1f s (compilation included)", self.compile_seconds)
            self._loss_sum += loss.detach().float() * len(y)
            self._correct += (out.detach().argmax(1) == y).sum()
            self._seen += len(y)
            self.step += 1
            self.batch_in_epoch += 1
            if self.batch_in_epoch % check_every == 0:
                self._check_finite(lr)
            for cb in self.callbacks:
                cb.on_step_end(self)
            if self.batch_in_epoch % 10 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{self._loss_sum.item() / max(self._seen, 1):.4f}")
        self._check_finite(lr)
        seconds = self._seconds_before + time.perf_counter() - self._start
        sums = self.world.sum(
            torch.stack(
                [self._loss_sum.double(), self._correct.double(), torch.tensor(float(self._seen), device=self.device, dtype=torch.float64)]
            )
        )
        loss_sum, correct, seen = (float(v) for v in sums)
        row = {
            "epoch": self.epoch + 1,
            "train_loss": round(loss_sum / max(seen, 1), 5),
            "train_acc": round(correct / max(seen, 1), 5),
            "lr": float(f"{lr:.6g}"),
            "seconds": round(seconds, 2),
            "images_per_s": round(seen / max(seconds, 1e-9), 1),
        }
        for cb in self.callbacks:
            cb.on_validation_start(self)
        if self.val_loader is not None:
            val = evaluate_loader(self.scored_model, self.val_loader, self.device, self.dtype, self.world)
            row.update(val_loss=round(val["loss"], 5), val_acc=round(val["acc"], 5))
        for cb in self.callbacks:  # KeepEpoch marks the row "improved" and "kept" (what best.pt holds)
            cb.on_validation_end(self, row)
        return row

    def _check_finite(self, lr: float) -> None:
        """Every rank stops together when any rank's loss is no longer finite (one stopping alone would
        leave the others waiting in the next step)."""
        total = self.world.sum(self._loss_sum.detach().clone().reshape(1))
        if not torch.isfinite(total).all():
            self._non_finite(self.batch_in_epoch - 1, lr)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step, with the techniques' hooks (mixing, clipping, the weight average); the outputs
        and the loss."""
        target = y
        for cb in self.callbacks:
            x, target = cb.on_batch_start(self, x, target)
        with hardware.autocast(self.device, self.dtype):
            out = self.net(x)
            loss = F.cross_entropy(out, target, weight=self.class_weights, label_smoothing=self.config.train.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for cb in self.callbacks:
            cb.on_after_backward(self)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for cb in self.callbacks:
            cb.on_optimizer_step(self)
        return out, loss

    def _non_finite(self, step_in_epoch: int, lr: float) -> None:
        kept = f"{self.last_path} keeps epoch {self.epoch}" if self.epoch else "no epoch had completed, so nothing was saved"
        raise ImgclfError(
            f"the training loss became non-finite in epoch {self.epoch + 1} at step {step_in_epoch + 1} "
            f"(learning rate {lr:.3g}); {kept}; try a lower --lr such as {lr / 10:.2g}."
        )

    @property
    def tta(self) -> bool:
        return test_time_views(self.config.train.tta, self.hflip)

    @property
    def hflip(self) -> bool:
        return bool(self.train_loader.augment and self.train_loader.augment.hflip)
