"""An exponential moving average of the weights (Polyak averaging), the model that is evaluated and saved
when `ema` is on: it smooths the last few hundred steps' noise at no cost to training speed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_STEPS = 10  # the decay ramps as (1 + step) / (WARMUP_STEPS + step), so early random weights fade fast


class WeightAverage:
    """The averaged copy of a model: parameters averaged, buffers (BatchNorm statistics) copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def _decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (WARMUP_STEPS + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self._decay()
        own: list[torch.Tensor] = list(self.module.parameters())
        torch._foreach_lerp_(own, [p.detach() for p in model.parameters()], 1 - d)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
