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

from imgclf.config import Config
from imgclf.data.imageset import ImageData, ImageSet
from imgclf.data.sources import source_id
from imgclf.engine import recipe
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
    config, notes = recipe.resolve(plan.config, data_obj)
    for note in notes:
        log.info(note)
    data_obj, dropped = _check_duplicates(data_obj, config)
    trainer = Trainer(data_obj, config, plan.run_dir, source_id(plan.source), replace=config.train.force and not plan.resuming)
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


def _load(plan: RunPlan) -> ImageData:
    """The training data with its separate validation and test sources, if any, attached."""
    from imgclf.data.sources import load_data

    # A separate validation source replaces the share of training images that would be held out.
    separate_val = "val" in plan.extra or plan.config.train.val
    config = dataclasses.replace(plan.config.data, val_fraction=0.0) if separate_val else plan.config.data
    data = plan.source if isinstance(plan.source, ImageData) else load_data(plan.source, config)
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
    aug_text = "off" if aug is None else ", ".join([f"crop/shift up to {aug.max_dy}px"] + (["flip"] if aug.hflip else [])
                                                    + ([f"erasing p={aug.erasing:g}"] if aug.erasing else []))
    log.info("training: %d epoch%s, batch %d, %s lr %g, %s schedule (warmup %.0f%%), weight decay %g, label smoothing %g, "
             "augmentation %s; every setting in %s", t.epochs, "" if t.epochs == 1 else "s", t.batch_size, t.optimizer,
             t.resolved_lr(), t.schedule, 100 * t.resolved_warmup(), t.resolved_weight_decay(), t.label_smoothing, aug_text,
             trainer.run_dir / "config.yaml")
