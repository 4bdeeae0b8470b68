"""The training loop every tutorial writes by hand, done once: epochs of steps with checkpoints after
each, a resumable run directory and a deployable bundle. imgclf.api.train() sets it up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.config import Config
from imgclf.data.imageset import ImageData
from imgclf.data.loader import DeviceLoader
from imgclf.engine import hardware
from imgclf.engine.bundle import save_bundle, unwrap
from imgclf.engine.ema import WeightAverage
from imgclf.data.augment import mix
from imgclf.engine.checkpoint import deferred_interrupts, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imgclf.engine.metrics_log import append_row, rewrite
from imgclf.engine.norm_stats import CALIBRATION_IMAGES, recalibrate
from imgclf.engine.schedule import lr_factor
from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")
EVAL_BATCH = 1024
FINITE_CHECK_EVERY = {"cpu": 1}  # steps between non-finite checks; a check costs a sync on a GPU
DEFAULT_FINITE_CHECK = 20


def _build_model(config: Config, data: ImageData) -> tuple[nn.Module, dict]:
    from imgclf.models.registry import create_model, default_model_name, fitted_kwargs

    t = config.train
    if t.init_from:
        from imgclf.engine.bundle import load_bundle

        model, spec = load_bundle(t.init_from)
        arch = spec["architecture"]
        if arch["in_channels"] != data.channels:
            raise ImgclfError(f"--init-from {t.init_from}: that model takes {arch['in_channels']}-channel images, this data has "
                              f"{data.channels}; pass --channels {arch['in_channels']}.")
        if spec["classes"] != data.classes:
            model.reset_classifier(data.num_classes)
            log.info("init-from %s: new head for %d classes (the bundle had %d)", t.init_from, data.num_classes, len(spec["classes"]))
        arch = {**arch, "num_classes": data.num_classes, "image_size": list(data.image_size)}
        return model.train(), arch
    name = t.model or default_model_name(data.image_size, t.pretrained)
    kwargs = fitted_kwargs(name, data.image_size)
    model = create_model(name, data.channels, data.num_classes, data.image_size, pretrained=t.pretrained, weights=t.weights,
                         partial_weights=t.partial_weights, **kwargs)
    arch = {"name": name, "in_channels": data.channels, "num_classes": data.num_classes, "image_size": list(data.image_size),
            "kwargs": kwargs}
    return model, arch


class Trainer:
    """One run: set up from the config (every setting decided, engine/recipe.py), then fit() epoch by
    epoch with checkpoints after each.

    The run directory is made when the first checkpoint is written, with the files in `pending`
    (config.yaml, run.json, ...): a run that fails before it has an epoch to keep leaves nothing behind.
    """

    def __init__(self, data: ImageData, config: Config, run_dir: Path, source_text: str | None, replace: bool = False):
        from imgclf.models.transfer import param_groups

        t = config.train
        self.config, self.data, self.run_dir, self.source_text = config, data, run_dir, source_text
        self.pending: dict[str, str] = {}  # file name -> text, written when the run directory is made
        self.replace = replace
        self._frozen: bool | None = None
        self.device = hardware.pick_device(t.device)
        self.dtype = hardware.pick_precision(t.precision, self.device)
        self.channels_last = hardware.use_channels_last(t.channels_last, self.device)
        torch.manual_seed(config.data.seed)
        model, self.arch = _build_model(config, data)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if t.compile else self.model
        self.ema = WeightAverage(self.model, t.ema_decay) if t.ema else None
        self.base_lr = t.resolved_lr()
        groups = param_groups(self.model, self.base_lr, t.backbone_lr_scale, t.resolved_weight_decay(), t.decay_norms)
        for g in groups:
            g["scale"] = g["lr"] / self.base_lr
        self.optimizer = self._optimizer(groups)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        loader_args = dict(mean=data.mean, std=data.std, device=self.device, channels_last=self.channels_last)
        self.train_loader = DeviceLoader(data.train, t.batch_size, train=True, augment=config.data.augment if t.augment else None,
                                         hflip_default=data.hflip, seed=config.data.seed, sampler=t.sampler,
                                         drop_last=len(data.train) > t.batch_size, **loader_args)
        self.class_weights = class_weights(data.train.labels, data.num_classes, self.device) if t.class_weights == "balanced" else None
        self.mix_gen = torch.Generator(device=self.device).manual_seed(config.data.seed + 7) if t.mixup or t.cutmix else None
        self.compile_seconds = 0.0
        self.budget = None  # a TimeBudget when training to a wall-clock budget (engine/budget.py)
        self.val_loader = DeviceLoader(data.val, EVAL_BATCH, **loader_args) if data.val is not None else None
        self.test_loader = DeviceLoader(data.test, EVAL_BATCH, **loader_args) if data.test is not None and data.test.labeled else None
        self.epoch, self.step = 0, 0
        self.best = {"val_acc": -1.0, "epoch": 0}
        self.bad_epochs = 0
        self.history: list[dict] = []

    def _optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        t = self.config.train
        if t.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.base_lr, momentum=t.momentum, nesterov=t.momentum > 0,
                                   weight_decay=t.resolved_weight_decay())
        cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=self.base_lr, weight_decay=t.resolved_weight_decay())

    # -- checkpoints ---------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def scored_model(self) -> nn.Module:
        """What validation scores and best.pt keeps: the weight average when it is on."""
        return self.ema.module if self.ema is not None else self.net

    def state(self) -> dict:
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step, "best": dict(self.best),
                 "early_stop": {"bad_epochs": self.bad_epochs}, "history": list(self.history), "rng": rng_state()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def restore(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # a run saved before its average existed starts the average from its weights
                self.ema.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = int(state["epoch"]), int(state["step"]), dict(state["best"])
        self.bad_epochs = int(state["early_stop"]["bad_epochs"])
        self.history = [dict(r) for r in state["history"]]
        set_rng_state(state["rng"])
        rewrite(self.run_dir / "metrics.csv", self.history)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> None:
        t = self.config.train
        start_epoch = self.epoch
        if self.budget is not None:
            self.budget.begin()
        try:
            while self.epoch < self.config.train.epochs:
                row = self._epoch(self.config.train.epochs * len(self.train_loader))
                self._end_epoch(row)
                if self.budget is not None:
                    self._keep_to_budget(self.epoch - start_epoch)
                if t.early_stop and self.bad_epochs >= t.early_stop:
                    log.info("early stop: no better validation accuracy for %d epochs (best %.2f%% at epoch %d)",
                             self.bad_epochs, 100 * self.best["val_acc"], self.best["epoch"])
                    break
        except KeyboardInterrupt:
            if self.epoch:
                log.warning("interrupted in epoch %d; %s holds the %d completed epoch(s): resume with: imgclf train --resume %s",
                            self.epoch + 1, self.last_path, self.epoch, self.run_dir)
            else:
                log.warning("interrupted in epoch 1, before any epoch completed: nothing was saved")
            raise
        except torch.OutOfMemoryError:
            h, w = self.data.image_size
            raise ImgclfError(f"the {self.device.type} ran out of memory at batch size {t.batch_size} ({self.arch['name']}, "
                              f"{self.data.channels}x{h}x{w} images); try --batch-size {max(1, t.batch_size // 2)}"
                              + (", --precision 16" if self.dtype is None and self.device.type == "cuda" else "")
                              + " or a smaller --image-size.") from None

    def _keep_to_budget(self, done: int) -> None:
        """Fewer epochs when the machine has slowed: the schedule is shortened (its decay still completes)."""
        left = self.budget.epochs_left(self, done)
        if left is None:
            return
        epochs = self.epoch + left
        log.warning("time budget: the epochs take longer than measured; %d epoch%s instead of %d, the learning-rate schedule "
                    "shortened to fit", epochs, "" if epochs == 1 else "s", self.config.train.epochs)
        self.config = dataclasses.replace(self.config, train=dataclasses.replace(self.config.train, epochs=epochs))
        if (self.run_dir / "config.yaml").is_file():
            (self.run_dir / "config.yaml").write_text(self.config.to_yaml())

    def _set_lr(self, total: int) -> float:
        t = self.config.train
        lr = self.base_lr * lr_factor(t.schedule, self.step, total, t.resolved_warmup())
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("scale", 1.0)
        return lr

    def _freeze_for(self, epoch: int) -> None:
        from imgclf.models.transfer import freeze_backbone, unfreeze

        t = self.config.train
        if not t.freeze_epochs:
            return
        frozen = epoch < t.freeze_epochs
        freeze_backbone(self.model) if frozen else unfreeze(self.model)
        if frozen != self._frozen:
            params = list(self.model.parameters())
            training = sum(p.numel() for p in params if p.requires_grad)
            if frozen:
                log.info("epoch %d: backbone frozen until epoch %d; %s of %s parameters train (the head and the normalisation "
                         "layers)", epoch + 1, t.freeze_epochs, f"{training:,}", f"{sum(p.numel() for p in params):,}")
            else:
                log.info("epoch %d: backbone unfrozen; all %s parameters train%s", epoch + 1, f"{training:,}",
                         f", the backbone at {t.backbone_lr_scale:g} x lr" if t.backbone_lr_scale != 1 else "")
            self._frozen = frozen

    def _epoch(self, total: int) -> dict:
        from tqdm import tqdm

        t = self.config.train
        self._freeze_for(self.epoch)
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, start = 0, time.perf_counter()
        check_every = FINITE_CHECK_EVERY.get(self.device.type, DEFAULT_FINITE_CHECK)
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{t.epochs}", unit="batch", leave=False, disable=None)
        lr = self.base_lr
        for i, (x, y) in enumerate(bar):
            lr = self._set_lr(total)
            first = time.perf_counter() if self.step == 0 and t.compile else None
            out, loss = self.train_step(x, y)
            if first is not None:
                self.compile_seconds = time.perf_counter() - first
                log.info("torch.compile: the first step took %.1f s (compilation included)", self.compile_seconds)
            loss_sum += loss.detach().float() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            self.step += 1
            if (i + 1) % check_every == 0 and not torch.isfinite(loss_sum):
                self._non_finite(i, lr)
            if i % 10 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):,.0f}")
        if not torch.isfinite(loss_sum):
            self._non_finite(len(self.train_loader) - 1, lr)
        seconds = time.perf_counter() - start
        row = {"epoch": self.epoch + 1, "train_loss": round(loss_sum.item() / max(seen, 1), 5),
               "train_acc": round(correct.item() / max(seen, 1), 5), "lr": float(f"{lr:.6g}"),
               "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1)}
        self.recalibrate_norms()
        if self.val_loader is not None:
            val = evaluate_loader(self.scored_model, self.val_loader, self.device, self.dtype)
            row.update(val_loss=round(val["loss"], 5), val_acc=round(val["acc"], 5))
        return row

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step (and the weight average's); the outputs and the loss."""
        t = self.config.train
        target = y
        if self.mix_gen is not None:
            x, target = mix(x, y, self.data.num_classes, t.mixup, t.cutmix, self.mix_gen)
        with hardware.autocast(self.device, self.dtype):
            out = self.net(x)
            loss = F.cross_entropy(out, target, weight=self.class_weights, label_smoothing=t.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return out, loss

    def recalibrate_norms(self) -> None:
        """BatchNorm statistics of the scored weights measured on training images (engine/norm_stats.py),
        in eager mode (a compiled graph would be built again for it)."""
        recalibrate(unwrap(self.scored_model), self.train_loader.sample(CALIBRATION_IMAGES),
                    lambda: hardware.autocast(self.device, self.dtype))

    def _non_finite(self, step_in_epoch: int, lr: float) -> None:
        kept = f"{self.last_path} keeps epoch {self.epoch}" if self.epoch else "no epoch had completed, so nothing was saved"
        raise ImgclfError(f"the training loss became non-finite in epoch {self.epoch + 1} at step {step_in_epoch + 1} "
                          f"(learning rate {lr:.3g}); {kept}; try a lower --lr such as {lr / 10:.2g}.")

    def _end_epoch(self, row: dict) -> None:
        with deferred_interrupts():
            self._record_epoch(row)

    def _record_epoch(self, row: dict) -> None:
        """Checkpoints first, then the metrics row: a row on disk always has its checkpoint behind it."""
        t = self.config.train
        self.epoch += 1
        self.history.append(row)
        if self.pending:
            self._make_run_dir()
        val_text = f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%" if "val_acc" in row else ""
        log.info("epoch %d/%d  train loss %.4f acc %.2f%%%s  lr %.4g  %.1fs  %s img/s", row["epoch"], t.epochs,
                 row["train_loss"], 100 * row["train_acc"], val_text, row["lr"], row["seconds"], f"{row['images_per_s']:,.0f}")
        metric = row.get("val_acc", row["train_acc"])
        if metric > self.best["val_acc"]:
            self.best, self.bad_epochs = {"val_acc": metric, "epoch": row["epoch"]}, 0
            save_checkpoint(self.run_dir / "checkpoints" / "best.pt", {"model": unwrap(self.scored_model).state_dict(), "epoch": self.epoch,
                                                                       "best": dict(self.best)})
        else:
            self.bad_epochs += 1
        save_checkpoint(self.last_path, self.state())
        append_row(self.run_dir / "metrics.csv", row)
        self._warn_if_failing(row)

    def _make_run_dir(self) -> None:
        from imgclf.engine.rundir import make_run_dir

        made = make_run_dir(self.run_dir, self.replace)
        if made != self.run_dir:
            log.warning("run directory %s was taken meanwhile; this run is in %s", self.run_dir, made)
            self.run_dir = made
        for name, text in self.pending.items():
            (self.run_dir / name).write_text(text)
        self.pending = {}

    def _warn_if_failing(self, row: dict) -> None:
        """One line when training is visibly failing, with the likely fix: after the first epoch a training
        loss clearly above chance (10% over it), or a validation loss that explodes."""
        chance = math.log(max(2, self.data.num_classes))
        lr = self.config.train.resolved_lr()
        if row["epoch"] == 1 and row["train_loss"] > 1.1 * chance:  # at chance, a first epoch of few steps may still be fine
            steps = len(self.train_loader)
            fix = (f"with {steps} step(s) an epoch it has had little chance to: lower --batch-size (now {self.config.train.batch_size})"
                   if steps < 10 else f"if it stays there, lower --lr (now {lr:g}) or raise --epochs")
            log.warning("epoch 1 ended with a training loss of %.2f, above chance (%.2f for %d classes): the model is not "
                        "learning yet; %s", row["train_loss"], chance, self.data.num_classes, fix)
        val_losses = [r["val_loss"] for r in self.history if "val_loss" in r]
        exploded = val_losses and (not math.isfinite(val_losses[-1]) or val_losses[-1] > 3 * chance
                                   and (len(val_losses) == 1 or val_losses[-1] > 3 * min(val_losses[:-1])))
        if exploded:
            log.warning("validation loss %.1f in epoch %d has exploded (chance is %.2f): the learning rate is likely too "
                        "high for this data; try --lr %g", val_losses[-1], row["epoch"], chance, lr / 10)

    # -- the end -------------------------------------------------------------------------------------
    def finish(self) -> dict | None:
        """Best weights into the model, one scoring pass (test split, else validation) for the test
        figures and the report, then the bundle and results.json."""
        from imgclf.report.page import write_report

        best_path = self.run_dir / "checkpoints" / "best.pt"
        if best_path.exists():
            unwrap(self.model).load_state_dict(load_checkpoint(best_path)["model"])
        evaluation = self.score()
        test = None
        if self.data.test is not None and not self.data.test.labeled:
            log.info("test: %d images without labels, not scored (the report scores the validation split); predict them with "
                     "imgclf predict %s <their folder or CSV of ids>", len(self.data.test), self.run_dir)
        if evaluation is not None and evaluation.split == "test":
            m = evaluation.metrics
            test = {"loss": m["loss"], "acc": m["accuracy"], "images": m["images"]}
            log.info("test: loss %.4f  accuracy %.2f%% on %d images (weights of epoch %d)", test["loss"], 100 * test["acc"],
                     test["images"], self.best["epoch"])
        metrics = {"best_epoch": self.best["epoch"], "best_val_acc": self.best["val_acc"] if self.val_loader else None,
                   "epochs": self.epoch, "test_loss": test["loss"] if test else None, "test_acc": test["acc"] if test else None,
                   "train_seconds": round(sum(r["seconds"] for r in self.history), 2), "tta": self.tta,
                   **({"compile_seconds": round(self.compile_seconds, 2)} if self.config.train.compile else {})}
        save_bundle(self.run_dir, self.model, self.bundle_spec(metrics))
        (self.run_dir / "results.json").write_text(json.dumps(metrics, indent=2))
        if evaluation is not None:
            log.info("report: %s", write_report(self.run_dir, evaluation, self.data.summary(), self.audit()))
        else:
            log.info("no labeled test or validation images: no report")
        return test

    def audit(self):
        """The data audit for the report, its findings written to audit.csv in the run directory."""
        from imgclf.data.audit import audit

        result = audit(self.data)
        result.write_csv(self.run_dir / "audit.csv")
        return result

    def score(self):
        """The Evaluation of the test split when it is labeled, else of validation; None without either."""
        from imgclf.evaluation import Evaluation, compute_metrics, predict_probs

        d = self.data
        split, part = ("test", d.test) if self.test_loader is not None else ("val", d.val)
        if part is None or not len(part):
            return None
        probs = predict_probs(self.model, part, d.mean, d.std, device=self.device, batch_size=EVAL_BATCH, tta=self.tta)
        metrics = {**compute_metrics(part.labels, probs, d.classes, part.origins), "split": split, "tta": self.tta}
        return Evaluation(d.classes, split, part, probs, metrics)

    @property
    def tta(self) -> bool:
        """Test-time flips and shifts only for a model that saw mirrored images in training."""
        return bool(self.config.train.tta and self.train_loader.augment and self.train_loader.augment.hflip)

    def bundle_spec(self, metrics: dict) -> dict:
        d = self.data
        integers = all(c.lstrip("-").isdigit() and str(int(c)) == c for c in d.classes)
        return {"architecture": self.arch, "classes": d.classes, "class_type": "int" if integers else "str",
                "input": {"channels": d.channels, "size": list(d.image_size), "resize": self.config.data.resize},
                "normalization": {"mean": list(d.mean), "std": list(d.std)},
                "preprocessing": "decode, convert to the channels (gray or RGB, alpha on white), resize keeping the aspect "
                                 "ratio then centre-crop or pad to size, scale to [0,1], subtract mean, divide by std; NCHW float32",
                "metrics": metrics, "source": self.source_text,
                "training": {"hflip": bool(self.train_loader.augment and self.train_loader.augment.hflip), "tta": self.tta}}


def class_weights(labels, num_classes: int, device: torch.device) -> torch.Tensor:
    """scikit-learn's 'balanced' weights, n / (classes x count): a rare class weighs as much in the loss as a common one."""
    import numpy as np

    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32, device=device)


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DeviceLoader, device: torch.device, dtype) -> dict:
    """Mean cross-entropy (no label smoothing) and accuracy over a loader."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0
    for x, y in loader:
        with hardware.autocast(device, dtype):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    return {"loss": loss_sum.item() / max(n, 1), "acc": correct.item() / max(n, 1), "images": n}
