"""Learning-rate schedules as a pure function of the step: nothing to checkpoint but the step itself."""

from __future__ import annotations

import math

START_FACTOR = 1 / 25  # warmup starts at lr/25, as PyTorch's OneCycleLR does
END_FACTOR = 1e-4


def lr_factor(schedule: str, step: float, total: int, warmup: float) -> float:
    """The multiplier of the base learning rate at `step` (0-based) of `total`."""
    warm = int(round(warmup * total))
    if step < warm:
        return START_FACTOR + (1 - START_FACTOR) * step / warm
    if schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if schedule == "step":  # x0.1 at half and three quarters of the steps after warmup
        return 1.0 if progress < 0.5 else (0.1 if progress < 0.75 else 0.01)
    if schedule == "linear":  # straight down to zero, as airbench and many fast schedules do
        return END_FACTOR + (1 - END_FACTOR) * max(0.0, 1.0 - progress)
    # onecycle and cosine anneal the same way after warmup; onecycle differs by warming up by default
    return END_FACTOR + (1 - END_FACTOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
