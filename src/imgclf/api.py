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
from typing import Any

import torch
from torch import nn

from imgclf.config import Config, parse_duration
from imgclf.data.imageset import ImageData
from imgclf.data.sources import source_id
from imgclf.engine import distributed, recipe, transfer_recipe
from imgclf.engine.budget import TimeBudget
from imgclf.engine.callbacks import FollowFreeCores, KeepToBudget
from imgclf.engine.trainer import Trainer
from imgclf.errors import ImgclfError
from imgclf.finish import finish
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

    Under torchrun, every process calls this alike and trains its share (DistributedDataParallel); rank 0
    alone prints, writes the run directory and scores the result. A job restarted by torchrun
    (--max-restarts) continues its run directory.
    """
    from imgclf.logs import ensure_console

    ensure_console()
    base = config.train if config is not None else Config().train
    world = distributed.join(settings.get("device") or base.device, float(settings.get("dist_timeout") or base.dist_timeout))
    distributed.quiet_other_ranks(world)
    run_dir = None
    threads = torch.get_num_threads()  # the run follows the free cores; the caller gets its own count back
    try:
        plan = plan_run(data, config, resume, settings)
        run_dir = plan.run_dir
        return _train(plan, world)
    except distributed.LOST_CONTACT as err:
        raise ImgclfError(distributed.lost_contact_text(world, err, run_dir)) from None
    finally:
        if torch.get_num_threads() != threads:  # only where a run changed it: torchrun's ranks never do
            torch.set_num_threads(threads)
        distributed.leave(world)


def _train(plan: RunPlan, world: distributed.World) -> Run:
    plan.run_dir = world.from_main(plan.run_dir)  # the name is agreed before any rank writes
    resuming = world.gather(plan.resuming)
    if len(set(resuming)) > 1:
        raise ImgclfError(
            f"rank 0 {'resumes' if resuming[0] else 'starts'} {plan.run_dir} but another rank "
            f"{'does not see it' if resuming[0] else 'sees a run there'}: put --out on storage every machine sees."
        )
    if world.distributed and plan.config.train.time:
        raise ImgclfError("--time plans a run in one process; under torchrun give --epochs instead.")
    if world.distributed and plan.config.train.drop_label_issues and not plan.resuming:
        raise ImgclfError(
            "--drop-label-issues checks the labels in one process; under torchrun run 'imgclf data labels SOURCE' first "
            "and pass --drop with the label_issues.csv it writes."
        )
    data_obj = _load_once_per_machine(plan, world)
    data_obj, label_files = _without_label_issues(plan, data_obj)
    # On a CPU in one process, torch's threads are the cores other processes leave free, set before the budget's
    # measured steps (engine/cpu.py says why); processes under torchrun share the cores out (engine/distributed.py).
    follow = [] if world.distributed else FollowFreeCores.on_cpu(plan.config)
    budget = TimeBudget(parse_duration(plan.config.train.time)) if plan.config.train.time and not plan.resuming else None
    config, notes = recipe.resolve(_per_process(plan, world), data_obj, world.world_size, scale_lr=not plan.resuming)
    data_obj, dropped = drop_duplicates(data_obj, config)
    replace = config.train.force and not plan.resuming
    if budget is not None:
        measured = Trainer(data_obj, config, plan.run_dir, replace=replace, world=world, callbacks=[*_callbacks(config), *follow])
        config, notes = _plan_to_budget(budget, measured, plan, data_obj)
    for note in notes:
        log.info(note)
    config = _with_network_name(config, data_obj)
    info = {
        **plan.info,
        "requested": _plain(plan.requested) if not plan.resuming else plan.info.get("requested", {}),
        "splits": _splits(data_obj, config, plan),
        "processes": world.world_size,
        "machine": _machine(),
        **({"torchrun_id": distributed.run_id()} if distributed.run_id() else {}),
    }
    files = {}  # written with the run directory, at the first checkpoint
    if not plan.resuming:
        files = {"config.yaml": config.to_yaml(), "run.json": json.dumps(info, indent=2), **label_files}
        if dropped:
            from imgclf.data.audit import dropped_csv

            files["dedupe.csv"] = dropped_csv(dropped)
    callbacks = [*_callbacks(config), *follow, *([KeepToBudget(budget)] if budget is not None else [])]
    trainer = Trainer(data_obj, config, plan.run_dir, replace=replace, world=world, callbacks=callbacks, files=files)
    if plan.resuming:
        assert plan.checkpoint is not None  # resuming: a checkpoint was loaded
        trainer.restore(plan.checkpoint)
        info["changes"] = [*plan.info.get("changes", []), *plan.changes]
        if world.is_main:
            (plan.run_dir / "config.yaml").write_text(config.to_yaml())
            (plan.run_dir / "run.json").write_text(json.dumps(info, indent=2))
        assert config.train.epochs is not None  # recipe.resolve decided it
        if trainer.epoch >= config.train.epochs:
            log.info(
                "%s has done all its %d epochs: nothing to train; its bundle and report are written again (a larger --epochs extends it)",
                plan.run_dir,
                trainer.epoch,
            )
        else:
            within = plan.checkpoint.get("within_epoch")
            where = f"within epoch {trainer.epoch + 1} ({int(within['batches'])} batches in)" if within else f"after epoch {trainer.epoch}"
            log.info("resuming %s %s of %d", plan.run_dir, where, config.train.epochs)
    _log_start(trainer, config)
    trainer.fit()
    if world.is_main:
        trainer.make_run_dir()  # a probe alone trains no epoch, so no checkpoint has made it yet
    world.barrier()  # every rank done; from here rank 0 works alone
    test = finish(trainer, source_id(plan.source)) if world.is_main else None
    if world.is_main:
        log.info(
            "done: run directory %s (config.yaml, metrics.csv, checkpoints/, model.safetensors + model.json, report.html)", trainer.run_dir
        )
    return Run(trainer.run_dir, trainer.model, trainer.history, config, data_obj, test, trainer.best)


def _without_label_issues(plan: RunPlan, data: ImageData) -> tuple[ImageData, dict[str, str]]:
    """--drop-label-issues: the label check's suspects left out of training, found when the run starts
    (listed in label_issues.csv in the run directory, counted in run.json) and read back from that list
    when it resumes, so that a resumed run trains on the same images without checking again."""
    from imgclf.data.label_fixes import fixed, path_key, read_drop

    if not plan.config.train.drop_label_issues:
        return data, {}
    listed = plan.run_dir / "label_issues.csv"
    if plan.resuming:
        if not listed.is_file():
            raise ImgclfError(
                f"{plan.run_dir} was started with --drop-label-issues but its label_issues.csv is gone; it cannot resume alike."
            )
        data, _, removed = fixed(data, {}, read_drop(str(listed)), str(listed))
        log.info("label check: %d suspects left out of training, as listed in %s", removed, listed)
        return data, {}
    from imgclf.label_review import review

    found = review(data, plan.config)
    data, _, removed = fixed(data, {}, {path_key(r["path"]) for r in found.rows()}, "--drop-label-issues")
    log.info("label check: %s; left out of training, each listed in label_issues.csv in the run directory", found.summary_line())
    noise = found.noise()
    plan.info["label_issues"] = {
        "checked": len(found.images),
        "dropped": removed,
        "method": found.scored.method,
        "seconds": round(found.scored.seconds, 1),
        "noise_per_class": noise["per_class"],
        "most_confused": noise["most_confused"],
    }
    return data, {"label_issues.csv": found.csv_text()}


def _callbacks(config: Config) -> list:
    """What acts before training and after each step and epoch, in this order: the BatchNorm statistics of the
    user's images and the fitted head (from pretrained weights), the run's files, the log line, early stopping."""
    from imgclf.config import parse_save_every
    from imgclf.data.cache import cache_root
    from imgclf.engine.callbacks import EarlyStopping, EpochLog, RunFiles
    from imgclf.engine.norm_stats import AdaptNorms
    from imgclf.engine.probe import HeadFromProbe

    t = config.train
    steps, seconds = parse_save_every(t.save_every) if t.save_every else (None, None)
    adapt = [AdaptNorms(cache_root(config.data))] if t.adapt_norms else []
    probe = [HeadFromProbe(cache_root(config.data), probe_only=t.probe)] if t.probe or t.head_from_probe else []
    return [*adapt, *probe, RunFiles(steps, seconds), EpochLog(), EarlyStopping(t.early_stop)]


def _machine() -> dict:
    """What the run's speed and figures depend on, so runs on different machines are never compared blind:
    the CPU's model, its vector-unit flags and core count (engine/cpu.py), the GPU, torch's version."""
    from imgclf.engine import cpu

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**cpu.features(), "gpu": gpu, "torch": torch.__version__}


def _per_process(plan: RunPlan, world: distributed.World) -> Config:
    """A resumed run in another number of processes keeps its global batch: the batch per process is
    shared out anew (and recorded as a change of the run)."""
    config = plan.config
    if not plan.resuming:
        return config
    assert plan.checkpoint is not None  # resuming: a checkpoint was loaded
    before = int(plan.checkpoint.get("world_size", 1))
    batch = config.train.batch_size
    if before == world.world_size or batch is None:
        return config
    per = max(1, round(batch * before / world.world_size))
    log.info(
        "resuming in %d process%s instead of %d: batches of %d per process keep the global batch of %d",
        world.world_size,
        "" if world.world_size == 1 else "es",
        before,
        per,
        batch * before,
    )
    plan.changes.append(
        {
            "epoch": int(plan.checkpoint["epoch"]) + 1,
            "setting": "batch_size",
            "from": batch,
            "to": per,
            "why": f"{before} -> {world.world_size} processes, the global batch kept",
        }
    )
    return dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=per))


def _load_once_per_machine(plan: RunPlan, world: distributed.World) -> ImageData:
    """The data, decoded by one process per machine (local rank 0) while the others wait, then read from
    its cache by them: several processes decoding into one cache at once would each use every core."""
    if world.local_rank != 0:
        world.barrier()
    data = load_plan_data(plan)
    if world.local_rank == 0:
        world.barrier()
    return data


def report(run_dir: str | Path, source=None, *, split: str | None = None, batch_size: int | None = None, device: str = "auto") -> Path:
    """Score a finished run again and rewrite its report: on `source`, or on the run's own data loaded
    with the run's own settings (so its validation split comes back the same)."""
    from imgclf.data.audit import audit
    from imgclf.data.sources import load_data
    from imgclf.engine.bundle import bundle_dir
    from imgclf.engine.rundir import run_source
    from imgclf.evaluation import evaluate
    from imgclf.report.page import write_report

    run_dir = bundle_dir(run_dir)
    source = source or run_source(run_dir)
    if source is None:
        raise ImgclfError(f"{run_dir}: its training data was in memory; pass the data to score with --source SOURCE.")
    config = Config.from_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else Config()
    data = load_data(source, config.data)
    ev = evaluate(run_dir, data, split=split, batch_size=batch_size, device=device)
    findings = audit(data)
    findings.write_csv(run_dir / "audit.csv")
    return write_report(run_dir, ev, data.summary(), findings)


def _plan_to_budget(budget: TimeBudget, trainer: Trainer, plan: RunPlan, data: ImageData) -> tuple[Config, list[str]]:
    """The epochs that fit the time budget, measured on this trainer (put back as it was), and the recipe
    decided again for them (augmentation depends on the run's length): the config the run's trainer is
    built with. config.yaml gets the epochs, not the budget, so that it repeats the same run anywhere."""
    epochs = budget.plan(trainer)
    planned = dataclasses.replace(plan.config, train=dataclasses.replace(plan.config.train, epochs=epochs, time=None))
    return recipe.resolve(planned, data)


def _with_network_name(config: Config, data: ImageData) -> Config:
    """The config with the network named, as config.yaml records it: the one a run or bundle given to
    init-from was trained with, else the default for the data."""
    if config.train.model is not None:
        return config
    from imgclf.engine.bundle import read_spec
    from imgclf.models.registry import default_model_name

    t = config.train
    name = read_spec(t.init_from).architecture.name if t.init_from else default_model_name(data.image_size, t.pretrained)
    return dataclasses.replace(config, train=dataclasses.replace(t, model=name))


def load_plan_data(plan: RunPlan) -> ImageData:
    """The training data with its separate validation and test sources, if any, attached."""
    from imgclf.data.label_fixes import apply_fixes
    from imgclf.data.sources import load_data, with_separate_split

    # A separate validation source replaces the share of training images that would be held out.
    separate_val = "val" in plan.extra or plan.config.train.val
    # The weights' size and framing are the plan's from here on: the test and validation sources are decoded
    # with them, and config.yaml and model.json record them.
    plan.config, notes = transfer_recipe.before_loading(plan.config)
    config = dataclasses.replace(plan.config.data, val_fraction=0.0) if separate_val else plan.config.data
    data = plan.source if isinstance(plan.source, ImageData) else load_data(plan.source, config)
    data = recipe.enlarged(plan.config, data)
    data, more = transfer_recipe.normalised(plan.config, data)
    log.info(data.summary())
    for note in notes + more:
        log.info(note)
    for what in ("val", "test"):
        extra = plan.extra.get(what) or getattr(plan.config.train, what)
        if extra is not None:
            data = with_separate_split(data, what, extra, plan.config.data)
            where = extra if isinstance(extra, (str, Path)) else "in-memory arrays"
            log.info("%s: %d images from %s", {"val": "validation", "test": "test"}[what], len(getattr(data, what)), where)
    data, fixes = apply_fixes(data, plan.config.train.relabel, plan.config.train.drop)
    if fixes:
        said = [f"{fixes['relabeled']} label(s) changed by {fixes['relabel']}"] if "relabel" in fixes else []
        said += [f"{fixes['dropped']} image(s) left out by {fixes['drop']}"] if "drop" in fixes else []
        log.info("%s (the decoded cache is kept as it is)", "; ".join(said))
        plan.info["label_fixes"] = fixes
    return data


def drop_duplicates(data: ImageData, config: Config) -> tuple[ImageData, list[dict]]:
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
    out: dict[str, dict[str, Any]] = {"train": {"images": len(data.train)}}
    for what, part in (("val", data.val), ("test", data.test)):
        if part is None:
            continue
        origin: dict[str, Any]
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
    world = trainer.world
    threads = torch.get_num_threads()
    plural = f"{threads} thread{'s' if threads > 1 else ''}"
    on_cpu = "" if trainer.device.type == "cuda" else f", {plural} each"
    where = (
        f"{world.world_size} processes ({world.backend}, {trainer.device.type}{on_cpu})"
        if world.distributed
        else f"device cpu ({plural})"
        if trainer.device.type == "cpu"
        else f"device {trainer.device}"
    )
    log.info(
        "%s, precision %s, channels-last %s; model %s, %s parameters; run directory %s",
        where,
        {None: "32", torch.float16: "16", torch.bfloat16: "bf16"}[trainer.dtype],
        "on" if trainer.channels_last else "off",
        trainer.arch.name,
        f"{params:,}",
        trainer.run_dir,
    )
    t = config.train
    aug = trainer.train_loader.augment
    aug_text = (
        "off"
        if aug is None
        else ", ".join(
            ([f"crop/shift up to {aug.max_dy}px"] if aug.max_dy or aug.max_dx else [])
            + ([f"resized crops of {aug.min_area:.0%}+ of the area"] if aug.min_area else [])
            + ([("alternating " if aug.alternate_flips else "") + "flips"] if aug.hflip else [])
            + ([f"erasing p={aug.erasing:g}"] if aug.erasing else [])
        )
        or "none"
    )
    extras = [
        name
        for name, on in (
            ("weight average", t.ema),
            ("test-time views", trainer.tta),
            (f"mixup {t.mixup:g}", t.mixup),
            (f"cutmix {t.cutmix:g}", t.cutmix),
            (f"class weights {t.class_weights}", t.class_weights != "none"),
            (f"{t.sampler} sampler", t.sampler != "shuffle"),
            (f"gradient clip {t.clip_grad}", t.clip_grad),
        )
        if on
    ]
    assert t.batch_size is not None  # recipe.resolve decided it
    batch = f"{t.batch_size}" if not world.distributed else f"{t.batch_size} per process ({t.batch_size * world.world_size} in all)"
    log.info(
        "training: %d epoch%s, batch %s, %s lr %g, %s schedule (warmup %.0f%%), weight decay %g, label smoothing %g, "
        "augmentation %s%s; every setting in %s",
        t.epochs,
        "" if t.epochs == 1 else "s",
        batch,
        t.optimizer,
        t.resolved_lr(),
        t.schedule,
        100 * t.resolved_warmup(),
        t.resolved_weight_decay(),
        t.label_smoothing,
        aug_text,
        "".join(f", {e}" for e in extras),
        trainer.run_dir / "config.yaml",
    )
