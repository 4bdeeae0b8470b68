"""The bundle's input contract as one object: how an image becomes what the network was trained on.

Decoding (channels, size, resize mode) and normalisation come from model.json, and every way into a
trained model (prediction, export, the HTTP service) goes through this object, so that a 500x500 RGB
JPEG uploaded to a server is converted exactly as the training folder was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from imgclf.data import decode


@dataclass(frozen=True)
class Preprocessing:
    channels: int
    size: tuple[int, int]
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_fraction: float = 1.0

    @classmethod
    def from_spec(cls, spec: dict) -> Preprocessing:
        """From model.json's input and normalization; bundles written before interpolation and crop_fraction
        could change decoded bilinearly and kept the whole square, which the defaults say."""
        inp, norm = spec["input"], spec["normalization"]
        return cls(
            int(inp["channels"]),
            cast("tuple[int, int]", tuple(int(v) for v in inp["size"])),  # (height, width)
            inp["resize"],
            tuple(float(v) for v in norm["mean"]),
            tuple(float(v) for v in norm["std"]),
            inp.get("interpolation", "bilinear"),
            float(inp.get("crop_fraction", 1.0)),
        )

    def data_settings(self) -> dict:
        """load_data's keyword arguments that decode a source exactly as the training images were."""
        return {
            "image_size": self.size,
            "channels": self.channels,
            "resize": self.resize,
            "interpolation": self.interpolation,
            "crop_fraction": self.crop_fraction,
        }

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x H x W of one image as the network takes it."""
        return (self.channels, *self.size)

    # -- images to pixels --------------------------------------------------------------------------
    def read(self, source: decode.Source, max_pixels: int | None = None) -> np.ndarray | decode.BadImage:
        """One image (a path or its bytes) as uint8 C x H x W, or the reason it cannot be used."""
        return decode.read(source, self.channels, self.size, self.resize, max_pixels, self.interpolation, self.crop_fraction)

    def read_files(self, paths: list[str]) -> tuple[list[np.ndarray | str], dict[str, str]]:
        """A chunk of files (in a worker process): pixels or a reason each, and what the libraries said."""
        return decode.decode_many(paths, self.channels, self.size, self.resize, self.interpolation, self.crop_fraction)

    def from_pil(self, image) -> np.ndarray:
        return decode.prepare(image.copy(), self.channels, self.size, self.resize, self.interpolation, self.crop_fraction)

    def conform(self, batch: np.ndarray) -> np.ndarray:
        """uint8 N x C x H x W arrays of any size and 1, 3 or 4 channels, in the model's channels and size."""
        from imgclf.config import DataConfig
        from imgclf.data.sources import conform_arrays

        out, _ = conform_arrays(batch, DataConfig(**self.data_settings()))
        return out

    # -- pixels to the network's input ---------------------------------------------------------------
    def scale_shift(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """x_normalised = pixels * scale + shift, as training's loaders normalise."""
        from imgclf.data.loader import scale_shift

        return scale_shift(self.mean, self.std, device)

    def module(self, model: nn.Module) -> nn.Module:
        """The model behind this normalisation, as one module: raw 0..255 pixels in, logits out (export)."""
        return WithNormalisation(model, *self.scale_shift())

    def describe(self) -> dict:
        """The contract in words and numbers, for a service's /info and an export's sidecar."""
        return {
            "channels": self.channels,
            "size": list(self.size),
            "resize": self.resize,
            "interpolation": self.interpolation,
            "crop_fraction": self.crop_fraction,
            "mean": list(self.mean),
            "std": list(self.std),
            "values": "raw pixels 0..255; gray (1 channel) or RGB (3), alpha composited on white",
            "resize_rule": self.resize_rule(),
        }

    def resize_rule(self) -> str:
        h, w = self.size
        if self.resize == "crop" and self.crop_fraction < 1.0:
            big = [round(h / self.crop_fraction), round(w / self.crop_fraction)]
            return (
                f"keep the aspect ratio, resize ({self.interpolation}) to cover {big} (H, W), then crop the centre "
                f"{[h, w]} ({self.crop_fraction:g} of the side)"
            )
        return f"keep the aspect ratio, resize ({self.interpolation}), then {self.resize} to {[h, w]} (H, W)"


class WithNormalisation(nn.Module):
    """A model behind fixed normalisation buffers: raw 0..255 pixels in, logits out."""

    scale: torch.Tensor  # buffers, registered in __init__
    shift: torch.Tensor

    def __init__(self, model: nn.Module, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels * self.scale + self.shift)
