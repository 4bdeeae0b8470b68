"""A linear head fitted on a frozen pretrained network's features: the baseline in seconds, and the head
that fine-tuning starts from.

Why a fitted head before fine-tuning (linear probing, then fine-tuning; Kumar et al., 2022): a random
head sends large, wrong gradients into pretrained features during the first steps, and training only the
head for an epoch at a photo size costs as much as a full epoch's forward passes. Fitted on features
embedded once (models/features.py), the head is ready in seconds and the first epoch's loss starts below
chance.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.engine.callbacks import Callback
from imgclf.errors import ImgclfError

if TYPE_CHECKING:
    from imgclf.models.base import Classifier

log = logging.getLogger("imgclf")
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # penalty on the summed squared weights of standardised features, tried on validation
L2_WITHOUT_VALIDATION = 1e-3
MAX_ITER = 150  # L-BFGS iterations: converged well before on a few thousand images


@dataclass
class LinearHead:
    weight: torch.Tensor  # classes x features, for the raw (unstandardised) features
    bias: torch.Tensor
    l2: float
    val_acc: float | None
    val_loss: float | None
    train_acc: float


def _fit(
    z: torch.Tensor, y: torch.Tensor, l2: float, class_weight: torch.Tensor | None, start: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = (v.clone().requires_grad_(True) for v in start)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=MAX_ITER, line_search_fn="strong_wolfe", tolerance_grad=1e-7)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y, weight=class_weight) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_linear(
    train_x: np.ndarray,
    train_y: np.ndarray,
    classes: int,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    class_weight: torch.Tensor | None = None,
) -> LinearHead:
    """Multinomial logistic regression on standardised features, its penalty chosen on validation (the
    highest accuracy, then the lowest loss); folded back so that it applies to the raw features."""
    x = torch.from_numpy(np.asarray(train_x, np.float32))
    y = torch.from_numpy(np.asarray(train_y)).long()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    weight = class_weight.float().cpu() if class_weight is not None else None
    have_val = val_x is not None and val_y is not None and len(val_y) > 0
    vz = (torch.from_numpy(np.asarray(val_x, np.float32)) - mu) / sd if have_val else None
    vy = torch.from_numpy(np.asarray(val_y)).long() if have_val else None
    best: tuple[tuple[float, float] | None, float, torch.Tensor, torch.Tensor] | None = None
    w, b = torch.zeros(z.shape[1], classes), torch.zeros(classes)
    with torch.enable_grad():
        # From the strongest penalty to the weakest, each fit starting from the one before: a few
        # iterations each instead of a fit from zero.
        for l2 in sorted(L2_GRID if have_val else (L2_WITHOUT_VALIDATION,), reverse=True):
            w, b = _fit(z, y, l2, weight, (w, b))
            score = None
            if have_val:
                assert vz is not None and vy is not None  # have_val: both made above
                logits = vz @ w + b
                acc = float((logits.argmax(1) == vy).double().mean())
                loss = float(F.cross_entropy(logits, vy))
                score = (acc, -loss)
            # with validation every fit has a score, so best's is one too
            if best is None or (score is not None and score > cast("tuple[float, float]", best[0])):
                best = (score, l2, w, b)
    assert best is not None  # the grid has at least one penalty
    score, l2, w, b = best
    train_acc = float(((z @ w + b).argmax(1) == y).double().mean())
    weight_raw = (w / sd[:, None]).T.contiguous()
    bias_raw = b - (mu / sd) @ w
    return LinearHead(weight_raw.float(), bias_raw.float(), l2, score[0] if score else None, -score[1] if score else None, train_acc)


def set_head(model: nn.Module, head: LinearHead) -> None:
    """The network's classifier takes the fitted weights (timm's get_classifier(): a Linear layer)."""
    layer = cast("Classifier", model).get_classifier()  # a built-in network or a timm one: both have it
    if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != tuple(head.weight.shape):
        raise ImgclfError(
            f"{type(model).__name__}'s classifier is not a linear layer of {tuple(head.weight.shape)}; "
            "a fitted head cannot go there: leave out --probe and --head-from-probe."
        )
    with torch.no_grad():
        layer.weight.copy_(head.weight.to(layer.weight.device))
        layer.bias.copy_(head.bias.to(layer.bias.device))


class HeadFromProbe(Callback):
    """Before the first epoch: the features of the training and validation images (cached), a linear head
    fitted on them and put into the network, and one line with its validation accuracy and its time.
    probe_only: that head is the result (no epochs follow). A resumed run keeps the head it trained."""

    key = "probe"

    def __init__(self, cache_dir, probe_only: bool = False):
        self.cache_dir, self.probe_only = cache_dir, probe_only
        self.result: dict = {}

    def on_fit_start(self, trainer) -> None:
        from imgclf.engine.bundle import unwrap
        from imgclf.models.features import can_embed, features

        if self.result or trainer.step:
            return
        model, data = unwrap(trainer.model), trainer.data
        if not can_embed(model):
            raise ImgclfError(
                f"{trainer.arch.name} cannot give its features to a linear head; leave out --probe and "
                "--head-from-probe, or choose a timm architecture with --model."
            )
        parts = {"train": data.train}
        if data.val is not None and len(data.val) and data.val.labeled:
            parts["val"] = data.val
        start = time.perf_counter()
        got = features(model, parts, data.mean, data.std, trainer.device, self.cache_dir, trainer.channels_last)
        fit_start = time.perf_counter()
        head = fit_linear(
            got.parts["train"],
            data.train.labels,
            data.num_classes,
            got.parts.get("val"),
            data.val.labels if "val" in parts else None,
            trainer.class_weights,
        )
        set_head(model, head)
        if trainer.ema is not None:  # the average starts from the network as fine-tuning starts it
            trainer.ema.module.load_state_dict(model.state_dict())
        seconds = time.perf_counter() - start
        self.result = {
            "val_acc": head.val_acc,
            "val_loss": head.val_loss,
            "train_acc": head.train_acc,
            "l2": head.l2,
            "seconds": round(seconds, 2),
            "cached": got.cached,
        }
        where = "read from the cache" if got.cached else f"embedded in {got.seconds:.1f} s"
        score = (
            f"validation accuracy {100 * head.val_acc:.2f}% ({len(data.val)} images)"
            if head.val_acc is not None
            else f"training accuracy {100 * head.train_acc:.2f}% (no validation images)"
        )
        after = "" if self.probe_only else "; fine-tuning starts from this head"
        log.info(
            "linear probe on %s's features: %s; features of %d images %s, head fitted in %.1f s%s",
            trainer.arch.name,
            score,
            sum(len(p) for p in parts.values()),
            where,
            time.perf_counter() - fit_start,
            after,
        )
        if self.probe_only:
            trainer.best = {"val_acc": head.val_acc if head.val_acc is not None else head.train_acc, "epoch": 0}

    def state_dict(self) -> dict:
        return dict(self.result)

    def load_state_dict(self, state: dict) -> None:
        self.result = dict(state)
