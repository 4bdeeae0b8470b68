"""Training augmentation on whole batches on the device: no per-image Python, one generator per epoch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imgclf.config import AugmentConfig


def shift_and_flip(x: torch.Tensor, max_dy: int, max_dx: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (= random translation) and random horizontal flip, per image.

    Both are one gather over the padded batch with a per-image index: about 3x faster on CPU than
    advanced indexing followed by a separate flip.
    """
    if max_dy == 0 and max_dx == 0 and not flip:
        return x
    b, c, h, w = x.shape
    dev = x.device
    padded_w = w + 2 * max_dx
    padded = F.pad(x, (max_dx, max_dx, max_dy, max_dy)).reshape(b, c, -1)
    dy = torch.randint(0, 2 * max_dy + 1, (b, 1, 1), device=dev, generator=gen)
    dx = torch.randint(0, 2 * max_dx + 1, (b, 1, 1), device=dev, generator=gen)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    if flip:
        mirrored = torch.rand(b, 1, 1, device=dev, generator=gen) < 0.5
        cols = torch.where(mirrored, w - 1 - cols, cols)
    index = ((dy + rows) * padded_w + dx + cols).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.gather(2, index).reshape(b, c, h, w)


def random_erase(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al.): a rectangle of 2-33% of the area, aspect 0.3-3.3, set to 0 (the mean)."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(0.02, 0.33, generator=gen) * h * w
    aspect = torch.exp(torch.empty(b, device=dev).uniform_(math.log(0.3), math.log(3.3), generator=gen))
    eh = torch.sqrt(area * aspect).clamp(1, h).long()
    ew = torch.sqrt(area / aspect).clamp(1, w).long()
    y0 = (torch.rand(b, device=dev, generator=gen) * (h - eh + 1)).long()
    x0 = (torch.rand(b, device=dev, generator=gen) * (w - ew + 1)).long()
    on = torch.rand(b, device=dev, generator=gen) < p
    r = torch.arange(h, device=dev)[None, :, None]
    c = torch.arange(w, device=dev)[None, None, :]
    mask = ((r >= y0[:, None, None]) & (r < (y0 + eh)[:, None, None]) & (c >= x0[:, None, None])
            & (c < (x0 + ew)[:, None, None]) & on[:, None, None])
    return x.masked_fill(mask[:, None], 0.0)


def decided(cfg: AugmentConfig, image_size: tuple[int, int], hflip_default: bool) -> AugmentConfig:
    """cfg with its 'decide from the dataset' values decided: the crop padding (about 1/10 of the side)
    and whether flips keep the images' meaning."""
    pad = cfg.crop_padding if cfg.crop_padding is not None else max(1, round(min(image_size) / 10))
    return dataclasses.replace(cfg, crop_padding=pad, hflip=hflip_default if cfg.hflip is None else cfg.hflip)


@dataclass(frozen=True)
class Augment:
    """An AugmentConfig resolved for one dataset: every 'auto' decided, sizes in pixels."""

    max_dy: int
    max_dx: int
    hflip: bool
    erasing: float

    @classmethod
    def resolve(cls, cfg: AugmentConfig, image_size: tuple[int, int], hflip_default: bool) -> "Augment":
        h, w = image_size
        cfg = decided(cfg, image_size, hflip_default)
        return cls(cfg.crop_padding + round(cfg.translate * h), cfg.crop_padding + round(cfg.translate * w), cfg.hflip, cfg.erasing)

    def on_uint8(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Geometric steps, done before the float conversion to move 4x fewer bytes."""
        return shift_and_flip(x, self.max_dy, self.max_dx, self.hflip, gen)

    def on_float(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Steps that need normalised values (erasing to the mean)."""
        return random_erase(x, self.erasing, gen) if self.erasing > 0 else x
