"""Everything a training run can check before it decodes an image or makes a folder.

A typo in a model name, a weights file of another architecture, a run name already taken, `--pretrained`
without a network, a resume that would undo finished epochs: each fails here in a second, with one
line naming the fix, instead of after minutes of decoding or, worse, leaving a half-made run folder.
The CLI and the Python API both come through plan_run().
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from imgclf.config import PRESETS, Config, to_dict
from imgclf.errors import ImgclfError

# Settings a resumed run may change: how long it goes on and where it runs, not how it learns.
RESUMABLE = {"epochs", "early_stop", "device", "workers", "cache_dir", "data_root", "save_every", "resume_if_exists", "dist_timeout"}


@dataclass
class RunPlan:
    """A checked request: the settings, the data, the run directory (not made yet) and, when resuming,
    the checkpoint to continue from."""

    config: Config
    source: object  # a folder, CSV, built-in name, (images, labels) or ImageData
    run_dir: Path
    requested: dict  # the settings as the user gave them
    extra: dict = field(default_factory=dict)  # "val"/"test" -> an in-memory source (arrays)
    checkpoint: dict | None = None  # resuming: the last checkpoint
    info: dict = field(default_factory=dict)  # run.json as it stands (resuming) or will start
    changes: list[dict] = field(default_factory=list)  # settings changed on resume, with the epoch they start at

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


def plan_run(data, config: Config | None, resume: str | Path | None, settings: dict) -> RunPlan:
    """Check a training request from end to end before any work; raises ImgclfError with the fix."""
    from imgclf.data.sources import check_source

    settings = dict(settings)
    extra = {
        what: settings.pop(what)
        for what in ("val", "test")
        if what in settings and settings[what] is not None and not isinstance(settings[what], (str, Path))
    }
    settings.update({what: str(settings[what]) for what in ("val", "test") if isinstance(settings.get(what), Path)})
    if resume is None:
        resume = _run_to_continue(config, settings)
    plan = _resume_plan(data, resume, settings, extra) if resume is not None else _new_plan(data, config, settings, extra)
    if not hasattr(plan.source, "splits"):  # ImageData is checked already
        check_source(plan.source)
    for what in ("val", "test"):
        given = getattr(plan.config.train, what)
        if given and _is_number(given) and not Path(given).exists():
            fraction = " --val-fraction" if what == "val" else ""
            name = {"val": "validation", "test": "test"}[what]
            raise ImgclfError(
                f"--{what} {given}: a number where a {name} source (a folder, CSV or dataset) is expected"
                + (f"; did you mean{fraction} {given}?" if fraction else ".")
            )
        if given:
            check_source(given)
    check_model(plan.config)
    return plan


def _run_to_continue(config: Config | None, settings: dict) -> Path | None:
    """The unfinished run a restarted job continues: the --name'd one with --resume-if-exists, and under a
    torchrun restart (--max-restarts) that one or, unnamed, the one this torchrun job started; None to
    start a new run."""
    from imgclf.engine import distributed
    from imgclf.engine.rundir import slug

    t = (config or Config()).train
    out, name = settings.get("out") or t.out, settings.get("name") or t.name
    restarted = distributed.restart_count() > 0
    if not (settings.get("resume_if_exists") or t.resume_if_exists or restarted):
        return None
    path: Path | None
    if name:
        path = Path(out) / slug(name)
    elif restarted and distributed.run_id():
        path = _run_of_job(Path(out), cast(str, distributed.run_id()))  # just checked: an id
    else:
        return None
    return path if path is not None and (path / "checkpoints" / "last.pt").is_file() else None


def _run_of_job(out: Path, job: str) -> Path | None:
    """The run directory under out whose run.json records this torchrun job's id."""
    for info in sorted(out.glob("*/run.json")) if out.is_dir() else []:
        try:
            if json.loads(info.read_text()).get("torchrun_id") == job:
                return info.parent
        except (OSError, ValueError):
            continue
    return None


def _new_plan(data, config: Config | None, settings: dict, extra: dict) -> RunPlan:
    from imgclf.data.sources import source_id
    from imgclf.engine.rundir import choose_run_dir, slug

    if data is None:
        raise ImgclfError("no data given: pass a folder, a CSV, a built-in dataset name or (images, labels).")
    config = config or Config()
    preset = config.override(**settings).train.preset if "preset" in settings else None  # a name checked by the config
    if preset:
        keep = {"pretrained", "init_from"} & {k for k, v in settings.items() if v}  # the preset's network has no weights to offer
        config = config.override(**{k: v for k, v in PRESETS[preset].items() if not (keep and k == "model")})
    config = config.override(**settings)
    t = config.train
    name = f"{slug(Path(str(data)).name if isinstance(data, (str, Path)) else 'arrays')}-{t.model or 'default'}"
    run_dir = choose_run_dir(t.out, t.name, name, t.force)
    info = {"source": source_id(data), **{what: "in-memory arrays" for what in extra}}
    return RunPlan(config, data, run_dir, settings, extra, info=info)


def _resume_plan(data, resume: str | Path, settings: dict, extra: dict) -> RunPlan:
    from imgclf.engine.checkpoint import load_checkpoint

    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise ImgclfError(f"{run_dir}: not a run directory (no config.yaml); pass the folder a training run wrote.")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise ImgclfError(f"{run_dir}: no checkpoint to resume from (checkpoints/last.pt); start a new run instead.")
    saved = Config.from_yaml(run_dir / "config.yaml")
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    changes = resume_changes(saved, settings, int(checkpoint["epoch"]), run_dir)
    source = data if data is not None else info.get("source")
    if source is None:
        raise ImgclfError(f"{run_dir} was trained on in-memory arrays; pass them again: imgclf.train((images, labels), resume=...).")
    for what in ("val", "test"):
        if info.get(what) == "in-memory arrays" and what not in extra:
            raise ImgclfError(
                f"{run_dir} was given its {what} split as in-memory arrays; pass them again: "
                f"imgclf.train(..., {what}=(images, labels), resume=...)."
            )
    config = saved.override(**{k: v for k, v in settings.items() if k in RESUMABLE})
    return RunPlan(config, source, run_dir, settings, extra, checkpoint, info, changes)


def resume_changes(saved: Config, settings: dict, done: int, run_dir: Path) -> list[dict]:
    """The settings a resume changes, each with the epoch it takes effect at; refuses what a run in the
    middle of its schedule cannot change, by name, and an epoch count below what is done."""
    old = {**to_dict(saved.data), **to_dict(saved.data.augment), **to_dict(saved.train)}
    changes = []
    for name, value in settings.items():
        before = old.get(name)
        if value == before or (isinstance(before, list) and tuple(before) == value):
            continue
        if name not in RESUMABLE:
            raise ImgclfError(
                f"--{name.replace('_', '-')} cannot change when resuming {run_dir} (it is {before!r}): a run keeps "
                f"how it learns to the end; start a new run from its weights with --init-from {run_dir}."
            )
        if name == "epochs" and value < done:
            raise ImgclfError(
                f"{run_dir} has done {done} epochs; --epochs {value} would undo them: pass at least {done} (more extends the run)."
            )
        changes.append({"epoch": done + 1, "setting": name, "from": before, "to": value})
    return changes


def check_model(config: Config) -> None:
    """The network exists, its weights file fits it, a run or bundle to start from is one, and published
    weights can be had: all before any image is decoded."""
    from imgclf.engine.bundle import read_spec
    from imgclf.models import timm_models
    from imgclf.models.registry import builtin_models, check_model_name
    from imgclf.models.weights import read_state_dict

    t = config.train
    if t.init_from:
        read_spec(t.init_from)
    if t.model:
        check_model_name(t.model, t.pretrained)
    if t.pretrained and t.model and t.model not in builtin_models():
        timm_models.check_pretrained_reachable(t.model)
    if t.weights:
        state = read_state_dict(t.weights)
        if t.model and t.model not in builtin_models():
            timm_models.fit_weights(t.model, t.weights, state, t.partial_weights)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
