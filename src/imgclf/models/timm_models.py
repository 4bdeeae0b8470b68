"""Any timm architecture by name, with its head sized for our classes and its stem for our channels."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from imgclf.errors import ImgclfError, one_line

HUB_HOST = ("huggingface.co", 443)
CONNECT_TIMEOUT = 3.0  # seconds: offline, the hub client's own retries take close to a minute
MIN_BACKBONE_SHARE = 0.9  # weights that fill less of the backbone are another architecture's


@functools.lru_cache(maxsize=1)
def names() -> list[str]:
    import timm

    return timm.list_models()


def is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name)


def list_matching(pattern: str = "*") -> tuple[list[str], set[str]]:
    """Architectures matching a wildcard pattern, and those of them with published weights."""
    import timm

    archs = timm.list_models(pattern)
    with_weights = {n.split(".")[0] for n in timm.list_models(pattern, pretrained=True)}
    return archs, with_weights


def create(
    name: str,
    in_channels: int,
    num_classes: int,
    *,
    pretrained: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
    weights_name=None,
    **kwargs,
) -> nn.Module:
    """timm.create_model with in_chans and num_classes; weights from the hub or from a state dict we read.

    A local state dict goes through timm's own loading path, so timm's key filters (torchvision names to
    timm's), its input-conv adaptation (e.g. RGB stem summed for grayscale) and its head reset apply.
    """
    import timm

    args = dict(num_classes=num_classes, in_chans=in_channels, **kwargs)
    if state_dict is not None:
        try:
            with quiet_timm():
                return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict}, **args)
        except RuntimeError as err:
            text = " ".join(str(err).split())[:240]
            raise ImgclfError(f"{weights_name}: does not fit {name} ({text}); pass weights saved from the same architecture.") from None
    if not pretrained:
        return timm.create_model(name, pretrained=False, **args)
    check_pretrained_reachable(name)
    try:
        return timm.create_model(name, pretrained=True, **args)
    except Exception as err:  # hub refused, no published weights: one message with the way out
        raise ImgclfError(
            f"could not get the pretrained weights of {name} ({_short(err)}); download them on a machine with "
            "a network, or pass a local state dict with --weights FILE."
        ) from None


@contextlib.contextmanager
def quiet_timm():
    """timm's loader logs every unexpected key of a file on one line (15,000 characters for a file in
    another library's names); our coverage line says what loaded instead."""
    logger = logging.getLogger("timm.models._builder")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _short(err: Exception) -> str:
    """An exception's text on one line, cut at a word, without the terminal colours some libraries add."""
    text = one_line(str(err)) or type(err).__name__
    return text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " ..."


def check_pretrained_reachable(name: str) -> None:
    """Fail in seconds, with the way out, when published weights are neither cached nor downloadable.

    timm fetches them from the Hugging Face hub; offline, the hub client retries for most of a minute
    before a message cut mid-sentence."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    if not timm.models.is_model_pretrained(name):
        raise ImgclfError(f"{name} has no published weights; drop --pretrained, or pass a local state dict with --weights FILE.")
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    if repo and any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
        return
    where = f"the Hugging Face hub ({repo})" if repo else "the internet"
    fix = (
        f"download them on a machine with a network (they are kept in {constants.HF_HUB_CACHE}), or pass a local "
        "state dict with --weights FILE"
    )
    if constants.HF_HUB_OFFLINE:
        raise ImgclfError(
            f"the pretrained weights of {name} are not in the local cache and HF_HUB_OFFLINE is set, so they "
            f"cannot come from {where}; {fix}."
        )
    try:
        socket.create_connection(HUB_HOST, timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise ImgclfError(
            f"the pretrained weights of {name} come from {where}, which this machine cannot reach ({err.strerror or err}); {fix}."
        ) from None


@dataclass(frozen=True)
class WeightsPreprocessing:
    """What an architecture's published weights were trained on (timm's pretrained_cfg): the images a
    network starting from them should see. A weights file without a config of its own takes these."""

    tag: str  # the published weights it describes, e.g. efficientnet_lite0.ra_in1k
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]
    interpolation: str
    crop_pct: float


def weights_preprocessing(name: str) -> WeightsPreprocessing | None:
    """The preprocessing of `name`'s default published weights; None for an architecture without any."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not getattr(cfg, "mean", None):
        return None
    tag = f"{name}.{cfg.tag}" if getattr(cfg, "tag", None) else name
    return WeightsPreprocessing(
        tag,
        tuple(cfg.mean),
        tuple(cfg.std),
        cast("tuple[int, int]", tuple(int(v) for v in cfg.input_size[1:])),  # input_size is (channels, height, width)
        str(cfg.interpolation),
        float(cfg.crop_pct),
    )


@dataclass
class Coverage:
    """How much of a network a weights file fills, by tensor (parameters and BatchNorm statistics)."""

    loaded: int
    backbone: int  # tensors outside the classifier head
    missing: list[str]  # backbone tensors the file did not fill
    new_head: bool  # the head was left new (another number of classes, or none in the file)
    unused: int  # tensors of the file that went nowhere (another architecture's, or a dropped head)

    @property
    def share(self) -> float:
        return self.loaded / max(1, self.backbone)


def coverage(name: str, state_dict: dict[str, torch.Tensor], **kwargs) -> Coverage:
    """Which backbone tensors of `name` a state dict fills when timm loads it (its key filters, stem and
    head handling included): the file's values are replaced by NaN and the NaNs counted after loading."""
    probe = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state_dict.items()}
    with torch.random.fork_rng(devices=[]):  # the probe's random init must not shift the run's seeded one
        model = create(name, kwargs.pop("in_chans", 3), kwargs.pop("num_classes", 2), state_dict=probe, weights_name=None, **kwargs)
    heads = head_names(model)
    tensors = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    head = [k for k in tensors if any(k.startswith(h + ".") for h in heads)]
    backbone = [k for k in tensors if k not in head]
    filled = [k for k in tensors if torch.isnan(tensors[k]).any()]
    missing = [k for k in backbone if k not in filled]
    unused = max(0, sum(v.is_floating_point() for v in state_dict.values()) - len(filled))
    return Coverage(len(backbone) - len(missing), len(backbone), missing, any(k not in filled for k in head), unused)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of a timm network's classifier (its pretrained_cfg's 'classifier')."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    return (heads,) if isinstance(heads, str) else tuple(heads or ())


def by_order(name: str, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The file's tensors under the architecture's names, matched by position, when both list the same
    shapes in the same order: another library's names for the same network (EfficientNet-PyTorch's
    `_blocks.0._depthwise_conv.weight` is timm's `blocks.0.0.conv_dw.weight`). Only floating tensors
    are paired, so a file without BatchNorm's step counters still lines up. The file's tensors after the
    backbone's are its classifier, kept when they are shaped as one (timm then drops it for other
    classes). Returns (None, where the two first differ) when they do not line up."""
    import timm

    with torch.random.fork_rng(devices=[]):
        reference = timm.create_model(name, num_classes=0)
        heads = head_names(timm.create_model(name, num_classes=2))
    own = [(k, v.shape) for k, v in reference.state_dict().items() if v.is_floating_point()]
    theirs = [(k, v) for k, v in state_dict.items() if v.is_floating_point()]
    for i, (key, shape) in enumerate(own):
        if i >= len(theirs) or theirs[i][1].shape != shape:
            found = f"'{theirs[i][0]}' {list(theirs[i][1].shape)}" if i < len(theirs) else "nothing (the file ends)"
            return None, f"tensor {i + 1} of {name} is '{key}' {list(shape)}, the file's is {found}"
    out = {key: theirs[i][1] for i, (key, _) in enumerate(own)}
    tail = theirs[len(own) :]
    if len(heads) == 1 and len(tail) == 2 and tail[0][1].ndim == 2 and tail[1][1].shape == tail[0][1].shape[:1]:
        out[f"{heads[0]}.weight"], out[f"{heads[0]}.bias"] = tail[0][1], tail[1][1]
    return out, ""


def fit_weights(
    name: str, weights: str, state_dict: dict[str, torch.Tensor], partial: bool, num_classes: int = 2
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict to load into `name` and a sentence saying how much it fills and by which rule: by
    name (timm's, torchvision's, with wrappers' prefixes stripped), else by order and shape. An error when
    neither fills 90% of the backbone (unless partial)."""
    got, rule = coverage(name, state_dict, num_classes=num_classes), "by name"
    why_not = ""
    if got.share < MIN_BACKBONE_SHARE:
        remapped, why_not = by_order(name, state_dict)
        if remapped is not None:
            again = coverage(name, remapped, num_classes=num_classes)
            if again.share > got.share:
                first = next(k for k, v in state_dict.items() if v.is_floating_point())
                rule = f"by order and shape (the file names them another library's way, e.g. '{first}')"
                state_dict, got = remapped, again
    if got.share < MIN_BACKBONE_SHARE and not partial:
        order = f"; nor do its tensors line up with {name}'s in order ({why_not})" if why_not else ""
        raise ImgclfError(
            f"{weights}: by name it fills only {got.loaded} of the {got.backbone} backbone tensors of {name} "
            f"({got.share:.0%}; missing e.g. {', '.join(got.missing[:3])}){order}, so it holds another "
            f"architecture's weights; pass weights of {name} (or the --model they belong to), or "
            "--partial-weights to train with the rest left random."
        )
    left = f"; {len(got.missing)} left random (e.g. {', '.join(got.missing[:3])})" if got.missing else ""
    head = f"; a new head for {num_classes} classes" if got.new_head else ""
    unused = f"; {got.unused} tensors of the file unused" if got.unused else ""
    return state_dict, f"weights {weights}: {got.loaded} of {got.backbone} backbone tensors of {name} loaded {rule}{left}{head}{unused}"
