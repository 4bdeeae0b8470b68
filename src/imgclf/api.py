"""What a user calls to train: data -> checks -> trainer -> run directory -> score -> bundle -> report.

The only module that knows the whole flow of a training run; the CLI calls train() as a Python user
does, and every check that can fail a run is made before an image is decoded (preflight.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgclf.config import Config, parse_duration
from imgclf.data.imageset import ImageData, ImageSet
from imgclf.data.sources import source_id
from imgclf.engine import recipe
from imgclf.engine.budget import TimeBudget
from imgclf.engine.trainer import Trainer
from imgclf.preflight import RunPlan, plan_run

log = logging.getLogger("imgclf")


@dataclass
class Run:
    """What a training run produced: the model (best weights), its history and where it all lives."""

    run_dir: Path
    model: nn.Module
    history: list[dict]
    config: Config
    data: ImageData
    test: dict | None
    best: dict

    def __repr__(self) -> str:
        test = f", test acc {self.test['acc']:.2%}" if self.test else ""
        return f"Run({self.run_dir}, {len(self.history)} epochs, best val acc {self.best.get('val_acc', float('nan')):.2%}{test})"


def train(data=None, config: Config | None = None, *, resume: str | Path | None = None, **settings) -> Run:
    """Train a classifier: data is a folder, a CSV, a built-in name, (images, labels) or ImageData.

    Settings are the flat config names (model=, epochs=, lr=, image_size=, ...); val= and test= take a
    source or (images, labels). resume= continues a run directory from its last checkpoint; with a larger
    epochs= it extends a finished run. Whatever is left to decide (batch size, learning rate, augmentation,
    the network, the image size) is decided from the data, logged and written to config.yaml.
    """
    from imgclf.logs import ensure_console

    ensure_console()
    plan = plan_run(data, config, resume, settings)
    data_obj = _load(plan)
    budget = TimeBudget(parse_duration(plan.config.train.time)) if plan.config.train.time and not plan.resuming else None
    config, notes = recipe.resolve(plan.config, data_obj)
    data_obj, dropped = _check_duplicates(data_obj, config)
    trainer = Trainer(data_obj, config, plan.run_dir, source_id(plan.source), replace=config.train.force and not plan.resuming)
    if budget is not None:
        trainer, config, notes = _plan_to_budget(budget, trainer, plan, data_obj)
    for note in notes:
        log.info(note)
    if config.train.model is None:  # started from a run or bundle: its architecture
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, model=trainer.arch["name"]))
        trainer.config = config
    info = {**plan.info, "requested": _plain(plan.requested) if not plan.resuming else plan.info.get("requested", {}),
            "splits": _splits(data_obj, config, plan)}
    if plan.resuming:
        trainer.restore(plan.checkpoint)
        info["changes"] = [*plan.info.get("changes", []), *plan.changes]
        (plan.run_dir / "config.yaml").write_text(config.to_yaml())
        (plan.run_dir / "run.json").write_text(json.dumps(info, indent=2))
        if trainer.epoch >= config.train.epochs:
            log.info("%s has done all its %d epochs: nothing to train; its bundle and report are written again (a larger "
                     "--epochs extends it)", plan.run_dir, trainer.epoch)
        else:
            log.info("resuming %s after epoch %d of %d", plan.run_dir, trainer.epoch, config.train.epochs)
    else:
        trainer.pending = {"config.yaml": config.to_yaml(), "run.json": json.dumps(info, indent=2)}
        if dropped:
            from imgclf.data.audit import dropped_csv

            trainer.pending["dedupe.csv"] = dropped_csv(dropped)
    _log_start(trainer, config)
    trainer.fit()
    test = trainer.finish()
    log.info("done: run directory %s (config.yaml, metrics.csv, checkpoints/, model.safetensors + model.json, report.html)",
             trainer.run_dir)
    return Run(trainer.run_dir, trainer.model, trainer.history, config, data_obj, test, trainer.best)


def _plan_to_budget(budget: TimeBudget, trainer: Trainer, plan: RunPlan, data: ImageData) -> tuple[Trainer, Config, list[str]]:
    """The epochs that fit the time budget, measured on this trainer, and the recipe decided again for them
    (augmentation depends on the run's length). config.yaml gets the epochs, not the budget, so that it
    repeats the same run anywhere."""
    epochs = budget.plan(trainer)
    planned = dataclasses.replace(plan.config, train=dataclasses.replace(plan.config.train, epochs=epochs, time=None))
    config, notes = recipe.resolve(planned, data)
    if config.train.augment != trainer.config.train.augment:
        trainer = Trainer(data, config, trainer.run_dir, trainer.source_text, replace=trainer.replace)
    trainer.config, trainer.budget = config, budget
    return trainer, config, notes


def _load(plan: RunPlan) -> ImageData:
    """The training data with its separate validation and test sources, if any, attached."""
    from imgclf.data.sources import load_data

    # A separate validation source replaces the share of training images that would be held out.
    separate_val = "val" in plan.extra or plan.config.train.val
    config = dataclasses.replace(plan.config.data, val_fraction=0.0) if separate_val else plan.config.data
    data = plan.source if isinstance(plan.source, ImageData) else load_data(plan.source, config)
    data = recipe.enlarged(plan.config, data)
    log.info(data.summary())
    for what in ("val", "test"):
        extra = plan.extra.get(what) or getattr(plan.config.train, what)
        if extra is not None:
            data = dataclasses.replace(data, **{what: _extra_split(extra, data, plan.config, what)})
            where = extra if isinstance(extra, (str, Path)) else "in-memory arrays"
            log.info("%s: %d images from %s", {"val": "validation", "test": "test"}[what], len(getattr(data, what)), where)
    return data


def _extra_split(source, data: ImageData, config: Config, what: str) -> ImageSet:
    """A separate validation or test source (a path, a name, or arrays), brought to the training data's
    size, channels and classes."""
    from imgclf.data.sources import load_data

    size_cfg = dataclasses.replace(config.data, image_size=data.image_size, channels=data.channels, val_fraction=0.0)
    extra = load_data(source, size_cfg)
    where = f"--{what} {source}" if isinstance(source, (str, Path)) else f"{what}= arrays"
    return extra.train.relabel(extra.classes, data.classes, f"training classes ({where})")


def _check_duplicates(data: ImageData, config: Config) -> tuple[ImageData, list[dict]]:
    """Exact duplicates by hash only (no slower start): dropped with --dedupe (returned as rows for
    dedupe.csv), else one line if validation or test images are also in training."""
    from imgclf.data.audit import drop_duplicates, leak_line
    from imgclf.data.duplicates import exact_groups

    groups = exact_groups(data.splits())
    if config.train.dedupe:
        data, note, dropped = drop_duplicates(data, groups)
        log.info(note + ("; each in dedupe.csv in the run directory" if dropped else ""))
        return data, dropped
    if (line := leak_line(data, groups)) is not None:
        log.warning(line)
    return data, []


def _splits(data: ImageData, config: Config, plan: RunPlan) -> dict:
    """How each split came about, so that evaluate, report and resume rebuild the same held-out images."""
    out = {"train": {"images": len(data.train)}}
    for what, part in (("val", data.val), ("test", data.test)):
        if part is None:
            continue
        if what in plan.extra:
            origin = {"from": "in-memory arrays"}
        elif getattr(config.train, what):
            origin = {"from": "source", "source": getattr(config.train, what)}
        elif what == "val" and data.val_from == "train":
            origin = {"from": "train", "fraction": config.data.val_fraction, "seed": config.data.seed}
        else:
            origin = {"from": "the data's own split"}
        out[what] = {**origin, "images": len(part)}
    return out


def _plain(settings: dict) -> dict:
    """Settings as JSON can hold them (a tuple size becomes a list; anything else odd, its text)."""
    return json.loads(json.dumps(settings, default=str))


def _log_start(trainer: Trainer, config: Config) -> None:
    params = sum(p.numel() for p in trainer.model.parameters())
    log.info("device %s, precision %s, channels-last %s; model %s, %s parameters; run directory %s", trainer.device,
             {None: "32", torch.float16: "16", torch.bfloat16: "bf16"}[trainer.dtype], "on" if trainer.channels_last else "off",
             trainer.arch["name"], f"{params:,}", trainer.run_dir)
    t = config.train
    aug = trainer.train_loader.augment
    aug_text = "off" if aug is None else ", ".join(([f"crop/shift up to {aug.max_dy}px"] if aug.max_dy or aug.max_dx else [])
                                                    + ([("alternating " if aug.alternate_flips else "") + "flips"] if aug.hflip else [])
                                                    + ([f"erasing p={aug.erasing:g}"] if aug.erasing else [])) or "none"
    extras = [name for name, on in (("weight average", t.ema), ("test-time views", trainer.tta), (f"mixup {t.mixup:g}", t.mixup),
                                    (f"cutmix {t.cutmix:g}", t.cutmix), (f"class weights {t.class_weights}", t.class_weights != "none"),
                                    (f"{t.sampler} sampler", t.sampler != "shuffle"), (f"gradient clip {t.clip_grad}", t.clip_grad)) if on]
    log.info("training: %d epoch%s, batch %d, %s lr %g, %s schedule (warmup %.0f%%), weight decay %g, label smoothing %g, "
             "augmentation %s%s; every setting in %s", t.epochs, "" if t.epochs == 1 else "s", t.batch_size, t.optimizer,
             t.resolved_lr(), t.schedule, 100 * t.resolved_warmup(), t.resolved_weight_decay(), t.label_smoothing, aug_text,
             "".join(f", {e}" for e in extras), trainer.run_dir / "config.yaml")


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
        lines = [f"lr range test: {self.lrs[0]:.2g} to {self.lrs[-1]:.2g}, {len(self.lrs)} of {self.steps} steps{stop}",
                 f"suggested lr: {self.suggestion:.2g} (steepest fall of the smoothed loss; the lowest loss's lr / 10 is "
                 f"{self.min_loss_lr:.2g}); train with it: --lr {self.suggestion:.2g}",
                 f"the recipe's lr: {self.recipe_lr:g}"]
        return "\n".join(lines + ([f"plot: {self.plot}"] if self.plot else []))

    def __repr__(self) -> str:
        return f"LrFind(suggestion {self.suggestion:.2g}, recipe lr {self.recipe_lr:g}, {len(self.lrs)} of {self.steps} steps)"


def lr_find(data=None, config: Config | None = None, *, plot: str | Path | None = "lr_find.png", start: float | None = None,
            end: float | None = None, steps: int | None = None, **settings) -> LrFind:
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
    and a name already taken must not stop it."""
    return plan_run(data, config, None, {k: v for k, v in settings.items() if k not in ("name", "force")})


def _trial_trainer(plan: RunPlan) -> Trainer:
    """The trainer train() would build for this plan, never fit: its run directory is made only at the end
    of a first epoch, so it is never made."""
    data_obj = _load(plan)
    config, notes = recipe.resolve(plan.config, data_obj)
    for note in notes:
        log.info(note)
    data_obj, _ = _check_duplicates(data_obj, config)
    return Trainer(data_obj, config, plan.run_dir, source_id(plan.source))
