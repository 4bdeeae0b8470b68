"""The one home of every default and its help. A CLI flag, a config field and a keyword argument share one
name; cli.py builds the flags from these fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, cast

from imgclf.errors import ImgclfError

RESIZE_MODES = ("crop", "pad")
INTERPOLATIONS = ("bilinear", "bicubic")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "linear", "step", "constant")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("shuffle", "balanced")
KEEP = ("best", "last")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "32", "16", "bf16")
LR_SCALINGS = ("none", "linear", "sqrt")

# Named sets of settings, applied under the user's own (defaults < preset < config file < flags).
PRESETS = {
    "best": {"model": "small_resnet_wide", "epochs": 40, "augment": True, "ema": True, "tta": True},
}
PRESET_HELP = {
    "best": "a wider network trained longer, with augmentation, a weight average and test-time views: the highest "
    "accuracy in about 4x the default's time"
}


def setting(default: Any, help: str) -> Any:
    """A config field and the one text that documents it: the CLI's flag is built from the field (name,
    type, default) and this help, with "(default: X)" added when the default is a value; a None default's
    help says what is decided in its place."""
    return field(default=default, metadata={"help": help})


@dataclass
class AugmentConfig:
    """Batched, on-device training augmentation; None means 'decide from the dataset'."""

    crop_padding: int | None = setting(None, "pixels of zero padding for random crops (default: about 1/10 of the side)")
    resized_crop: float | None = setting(
        None,
        "random resized crops keeping at least this share of the area, resampled to the image size (default: 0, off; 0.08"
        " when starting from pretrained weights)",
    )
    hflip: bool | None = setting(None, "random horizontal flips (default: on, off for digit sets)")
    translate: float = setting(0.0, "further random shift as a fraction of the side")
    erasing: float = setting(0.0, "probability of random erasing per image")
    alternate_flips: bool = setting(False, "mirror each image in every other epoch instead of at random (airbench's flips)")


@dataclass
class DataConfig:
    """How a source becomes arrays: size, channels, split, bad-file policy, where caches live."""

    image_size: int | tuple[int, int] | None = setting(
        None, "side of the square the images are brought to (default: the dataset's own size)"
    )
    resize: str = setting("crop", "keep the aspect ratio and 'crop' the centre or 'pad' to the size")
    interpolation: str | None = setting(
        None,
        "bilinear or bicubic resampling to the size (default: bilinear; pretrained weights often name bicubic, which "
        "scored lower on users' pictures)",
    )
    crop_fraction: float | None = setting(
        None,
        "share of the side the centre crop keeps, as ImageNet weights are evaluated (0.875 keeps 224 px of 256; default: 1, "
        "the whole centred square)",
    )
    channels: int | None = setting(None, "1 (gray) or 3 (RGB); default: 1 for all-gray data, else 3")
    val_fraction: float = setting(0.1, "share of training images kept for validation when there is no val split")
    seed: int = setting(0, "seed of the validation split and shuffling")
    strict: bool = setting(False, "stop at the first bad file instead of skipping it")
    data_root: str | None = setting(None, "folder searched first for built-in datasets (also IMGCLF_DATA)")
    cache_dir: str | None = setting(None, "where decoded-image caches live (also IMGCLF_CACHE)")
    workers: int | None = setting(None, "decoding processes (default: all cores)")
    id_column: str | None = setting(None, "CSV column holding image ids (default: id, filename, file, image or path)")
    label_column: str | None = setting(None, "CSV column holding labels (default: label, class or target)")
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # from YAML or a flat override
            self.augment = from_dict(AugmentConfig, self.augment)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        self.validate()

    def validate(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ImgclfError(f"resize={self.resize!r} is not one of {', '.join(RESIZE_MODES)}.")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ImgclfError(f"interpolation={self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}.")
        if self.crop_fraction is not None and not 0.25 <= self.crop_fraction <= 1.0:
            raise ImgclfError(f"crop_fraction={self.crop_fraction} must be between 0.25 and 1 (0.875 keeps the centre 224 px of 256).")
        if self.resize == "pad" and self.crop_fraction not in (None, 1.0):
            raise ImgclfError(
                f"crop_fraction={self.crop_fraction} crops the centre, and resize='pad' keeps the whole image; use one of them."
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ImgclfError(f"val_fraction={self.val_fraction} must be at least 0 and below 1 (0.1 keeps 10% aside).")
        if self.channels not in (None, 1, 3):
            raise ImgclfError(f"channels={self.channels} must be 1 (gray) or 3 (RGB), or left unset to detect it.")
        crop = self.augment.resized_crop
        if crop is not None and not 0.0 <= crop < 1.0:
            raise ImgclfError(f"resized_crop={crop} must be at least 0 (off) and below 1 (0.25: crops keep a quarter of the area or more).")
        size = self.target_size()
        if size is not None and min(size) < 8:
            raise ImgclfError(f"image_size={self.image_size} is too small; use at least 8 pixels.")

    def framing(self) -> dict:
        """How decoding resamples and crops besides the size, as decode's keyword arguments."""
        return {
            "interpolation": self.interpolation or "bilinear",
            "crop_fraction": 1.0 if self.crop_fraction is None else float(self.crop_fraction),
        }

    def target_size(self) -> tuple[int, int] | None:
        """The requested (height, width), or None when the size is to be detected."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        h, w = self.image_size
        return (int(h), int(w))


@dataclass
class TrainConfig:
    """The model and how it is trained; None means 'decide from the data, the budget and the hardware'
    (engine/recipe.py decides, and config.yaml records what it decided)."""

    model: str | None = setting(
        None, "network name: see 'imgclf models' (default: small_resnet, fitted to the image size; resnet18 with --pretrained)"
    )
    pretrained: bool = setting(False, "start from published weights (timm models; needs a network)")
    weights: str | None = setting(
        None, "start from a local state dict (.safetensors, or .pth of tensors); the log says how much of the network it filled"
    )
    partial_weights: bool = setting(False, "accept --weights that fill under 90% of the backbone (the rest stays random)")
    init_from: str | None = setting(None, "start from the weights of an earlier run or bundle (new head when the classes differ)")
    freeze_epochs: int = setting(0, "epochs training only the head before unfreezing the backbone")
    backbone_lr_scale: float = setting(1.0, "backbone learning rate as a fraction of --lr")
    freeze_stride: int | None = setting(
        None,
        "layers whose output is 1/N of the image's side or finer (the stem and first stages) keep their pretrained "
        "weights (default: 4 with pretrained weights, 0 otherwise)",
    )
    frozen_norms: bool | None = setting(
        None, "BatchNorm layers keep their pretrained statistics while fine-tuning (default: on with pretrained weights, off otherwise)"
    )
    adapt_norms: bool | None = setting(
        None,
        "BatchNorm statistics measured on your training images before the head is fitted, instead of the pretrained ones "
        "(default: on with pretrained weights)",
    )
    probe: bool = setting(
        False,
        "no fine-tuning: a linear head fitted in seconds on the pretrained network's features (computed once and cached);"
        " needs --pretrained or --weights",
    )
    head_from_probe: bool | None = setting(None, "fine-tuning starts from that fitted head (default: on with --pretrained or --weights)")
    epochs: int | None = setting(None, "epochs to train (default: 12, up to 30 for small sets so that the run has about 1,200 steps)")
    batch_size: int | None = setting(
        None, "images per step (default: 256, smaller for small training sets: about 100 steps an epoch, at least 32)"
    )
    lr: float | None = setting(
        None, "peak learning rate (default: 0.002 for adamw, 0.001 for adam, 0.1 for sgd; from pretrained weights 2e-4, 3e-3 for sgd)"
    )
    optimizer: str = setting("adamw", "adamw, adam or sgd (Nesterov)")
    momentum: float = setting(0.9, "SGD momentum, Nesterov")
    weight_decay: float | None = setting(None, "weight decay (default: 0.05 for adamw, 5e-4 for sgd, 0 for adam)")
    schedule: str = setting("cosine", "cosine, onecycle, linear, step or constant")
    warmup: float | None = setting(None, "fraction of the steps warming up (default: 0.02 for cosine, 0.25 for onecycle, else 0)")
    label_smoothing: float = setting(0.1, "label smoothing of the training loss")
    decay_norms: bool = setting(
        False, "weight decay on normalisation weights and biases too (without it: only on the weights of convs and linears)"
    )
    clip_grad: float | None = setting(None, "clip the gradient norm to this value (default: no clipping)")
    ema: bool = setting(False, "evaluate and save an exponential moving average of the weights")
    ema_decay: float = setting(0.998, "the average's decay per step")
    tta: bool | None = setting(
        None,
        "score the final model on each image, its mirror and 1-pixel shifts (default: on when training augmented with flips, "
        "off from pretrained weights; never for a model trained without flips)",
    )
    mixup: float = setting(0.0, "mixup with Beta(a, a); 0 is off")
    cutmix: float = setting(0.0, "cutmix with Beta(a, a); 0 is off (with --mixup too, each batch picks one)")
    class_weights: str = setting("none", "'balanced' weighs each class in the loss by the inverse of its frequency")
    sampler: str = setting("shuffle", "'balanced' draws every class equally often each epoch")
    time: str | None = setting(
        None,
        "a wall-clock budget such as 90s, 3m or 1h instead of --epochs: the epochs are planned from the measured speed so"
        " that the whole schedule and the final scoring fit in it",
    )
    preset: str | None = setting(
        None, "a named set of settings: " + ", ".join(f"'{k}' ({v})" for k, v in PRESET_HELP.items()) + "; other settings override it"
    )
    augment: bool | None = setting(
        None,
        "training augmentation on or off (default: crops, shifts and flips for runs of 30+ epochs and 1,000+ steps, flips alone "
        "from 8 epochs, off for shorter runs; from pretrained weights, random resized crops and flips always)",
    )
    device: str = setting("auto", "auto, cpu, cuda or mps; auto takes cuda, then mps, then cpu")
    precision: str = setting(
        "auto",
        "auto, 32, 16 or bf16; auto is bf16 or 16 on CUDA, bf16 on a CPU with bf16 units (AVX512-BF16 or AMX) when training "
        "from scratch, 32 elsewhere",
    )
    threads: int | None = setting(
        None,
        "torch threads on a CPU (default: one per core other processes leave free, looked at again every 5 s: threads "
        "sharing a busy core wait on each other)",
    )
    channels_last: bool | None = setting(None, "channels-last memory format (default: on for CPU and CUDA)")
    compile: bool = setting(False, "torch.compile the model")
    keep: str | None = setting(
        None,
        "the weights the run ends with: best (the epoch of the highest validation accuracy) or last (default: last with "
        "pretrained weights, best otherwise)",
    )
    early_stop: int = setting(0, "stop after N epochs without a better validation accuracy; 0 never stops early")
    out: str = setting("runs", "folder of run directories")
    name: str | None = setting(None, "run directory name (default: <data>-<model>, numbered when taken)")
    force: bool = setting(False, "replace an existing run directory of that --name")
    dedupe: bool = setting(
        False,
        "drop exact repeats inside training (every copy when their labels differ) and training copies of validation/test "
        "images; each listed in dedupe.csv",
    )
    relabel: str | None = setting(
        None, "a CSV of path,label (label_issues.csv as edited: its label or suggested column) whose labels replace the given ones"
    )
    drop: str | None = setting(None, "a CSV with a path column (or one path a line) of images to leave out, e.g. label_issues.csv")
    drop_label_issues: bool = setting(
        False, "run the label check ('imgclf data labels') on the training images first and leave out its suspects"
    )
    val: str | None = setting(None, "a separate validation source")
    test: str | None = setting(None, "a separate test source")
    save_every: str | None = setting(
        None,
        "checkpoints within epochs too: every N steps (e.g. 500) or a duration (e.g. 10m); a resume continues exactly there "
        "(default: at the end of each epoch only)",
    )
    resume_if_exists: bool = setting(
        False,
        "with --name: continue that run if it exists and is unfinished, else start it (for jobs a scheduler restarts; "
        "under torchrun restarts this is automatic)",
    )
    sync_bn: bool = setting(False, "several processes: BatchNorm statistics over the global batch (SyncBatchNorm)")
    lr_scaling: str = setting(
        "none",
        "several processes with --batch-size per process: none, linear or sqrt in the number of processes; none: the lr "
        "is the one for the global batch",
    )
    dist_timeout: float = setting(300.0, "seconds a process waits for the others before the job ends with an error (a lost or stuck rank)")

    def __post_init__(self) -> None:
        for field_name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("device", DEVICES),
            ("precision", PRECISIONS),
            ("class_weights", CLASS_WEIGHTS),
            ("sampler", SAMPLERS),
            ("lr_scaling", LR_SCALINGS),
        ):
            value = str(getattr(self, field_name))
            setattr(self, field_name, value)
            if value not in allowed:
                raise ImgclfError(f"{field_name}={value!r} is not one of {', '.join(allowed)}.")
        if (self.epochs is not None and self.epochs < (0 if self.probe else 1)) or (self.batch_size is not None and self.batch_size < 1):
            raise ImgclfError(f"epochs ({self.epochs}) and batch_size ({self.batch_size}) must be at least 1.")
        if self.threads is not None and self.threads < 1:
            raise ImgclfError(f"threads={self.threads} must be at least 1 (leave it out to follow the free cores).")
        if self.lr is not None and self.lr <= 0:
            raise ImgclfError(f"lr={self.lr} must be positive.")
        if not 0.0 < self.ema_decay < 1.0:
            raise ImgclfError(f"ema_decay={self.ema_decay} must be between 0 and 1 (0.998 averages about the last 500 steps).")
        if self.mixup < 0 or self.cutmix < 0 or (self.clip_grad is not None and self.clip_grad <= 0):
            raise ImgclfError(f"mixup ({self.mixup}) and cutmix ({self.cutmix}) must be 0 (off) or positive, clip_grad positive.")
        if self.preset is not None and self.preset not in PRESETS:
            raise ImgclfError(f"preset={self.preset!r} is not one of {', '.join(PRESETS)}.")
        if self.time is not None:
            self.time = str(self.time)
            parse_duration(self.time)
        if self.save_every is not None:
            self.save_every = str(self.save_every)
            parse_save_every(self.save_every)
        if self.keep is not None and self.keep not in KEEP:
            raise ImgclfError(
                f"keep={self.keep!r} is not one of {', '.join(KEEP)} (the weights of the best validation epoch, or of the last)."
            )
        if self.dist_timeout <= 0:
            raise ImgclfError(f"dist_timeout={self.dist_timeout} must be a positive number of seconds (default 300).")
        if self.pretrained and self.weights:
            raise ImgclfError("pass either --pretrained (published weights) or --weights FILE, not both.")
        if (self.probe or self.head_from_probe) and not (self.pretrained or self.weights):
            flag = "--probe" if self.probe else "--head-from-probe"
            raise ImgclfError(
                f"{flag} fits a head on a pretrained network's features; add --pretrained or --weights FILE "
                "(with --model), or leave it out to train from scratch."
            )
        if self.adapt_norms and not (self.pretrained or self.weights or self.init_from):
            raise ImgclfError(
                "--adapt-norms measures a trained network's BatchNorm statistics on your images; add --pretrained "
                "or --weights FILE (with --model), or leave it out to train from scratch."
            )

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else {"sgd": 0.1, "adam": 1e-3, "adamw": 2e-3}[self.optimizer]

    def resolved_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else {"sgd": 5e-4, "adam": 0.0, "adamw": 0.05}[self.optimizer]

    def resolved_warmup(self) -> float:
        return self.warmup if self.warmup is not None else {"onecycle": 0.25, "cosine": 0.02}.get(self.schedule, 0.0)


@dataclass
class Config:
    """Every setting of a run: what the data layer needs and what the trainer needs.

    Field names are unique across sections, so flat keyword arguments and flags find their place.
    """

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = from_dict(DataConfig, self.data)
        if isinstance(self.train, dict):
            self.train = from_dict(TrainConfig, self.train)

    def override(self, **values) -> Config:
        """A copy with flat settings (image_size=64, lr=0.05, erasing=0.2, ...) applied and validated."""
        sections = {"data": to_dict(self.data), "train": to_dict(self.train)}
        homes = {name: ("data",) for name in sections["data"] if name != "augment"}
        homes.update({name: ("data", "augment") for name in sections["data"]["augment"]})
        homes.update({name: ("train",) for name in sections["train"]})
        unknown = sorted(set(values) - set(homes))
        if unknown:
            import difflib

            hints = [f"{u} -> {c[0]}" for u in unknown for c in [difflib.get_close_matches(u, homes, n=1)] if c]
            hint = f" (did you mean: {', '.join(hints)}?)" if hints else ""
            raise ImgclfError(f"unknown setting(s) {', '.join(unknown)}{hint}; known settings: {', '.join(sorted(homes))}.")
        for name, value in values.items():
            target = sections
            for key in homes[name]:
                target = target[key]
            target[name] = value
        # dicts: Config.__post_init__ builds (and validates) the sections from them
        return Config(data=cast(DataConfig, sections["data"]), train=cast(TrainConfig, sections["train"]))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump({"data": to_dict(self.data), "train": to_dict(self.train)}, sort_keys=False)

    @classmethod
    def from_yaml(cls, path) -> Config:
        import yaml

        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ImgclfError(
                f"{path}: cannot read it as a YAML config ({str(err).splitlines()[0]}); pass a config.yaml written by imgclf."
            ) from None
        if not isinstance(values, dict) or set(values) - {"data", "train"}:
            found = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ImgclfError(f"{path}: a config has two sections, data: and train:; found {found}.")
        # dicts: __post_init__ builds the sections from them, naming any unknown key
        return cls(data=cast(DataConfig, dict(values.get("data") or {})), train=cast(TrainConfig, dict(values.get("train") or {})))


def parse_duration(text: str) -> float:
    """Seconds in '90s', '3m', '1h', '1h30m' or a plain number of seconds."""
    import re

    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", value)
        if not value or parts is None:
            raise ImgclfError(f"time={text!r} is not a duration; write it like 90s, 3m, 1h or 1h30m.")
        h, m, s = (float(p) if p else 0.0 for p in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if seconds < 5:
        raise ImgclfError(f"time={text!r} is under 5 seconds, too short to measure and plan a run; give at least 5s.")
    return seconds


def parse_save_every(text: str) -> tuple[int | None, float | None]:
    """(steps, None) for a plain number such as '500', (None, seconds) for a duration such as '10m'."""
    value = str(text).strip().lower()
    if value.isdigit():
        if int(value) < 1:
            raise ImgclfError(f"save_every={text!r}: give at least 1 step, or a duration such as 10m.")
        return int(value), None
    try:
        return None, parse_duration(value)
    except ImgclfError:
        raise ImgclfError(f"save_every={text!r} is neither a number of steps (500) nor a duration (90s, 10m, 1h).") from None


def to_dict(config: Any) -> dict:
    """A plain dict (YAML-ready) of a config dataclass, nested sections included."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict) -> Any:
    """Build a config dataclass from a dict, naming any unknown key instead of ignoring it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ImgclfError(f"unknown {cls.__name__} setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return cls(**values)
