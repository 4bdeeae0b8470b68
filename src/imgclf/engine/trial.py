"""Trials on a live trainer (a learning-rate range test, a memory probe, timing a time budget's steps)
that leave no trace: the trainer is put back exactly as it was, so that it can still fit() as if nothing
had happened.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from imgclf.engine.checkpoint import rng_state, set_rng_state


def snapshot(trainer) -> dict:
    """The trainer's weights, optimizer, grad scaler, weight average and random state, copied to the CPU."""
    return {
        "model": _on_cpu(trainer.model.state_dict()),
        "optimizer": _on_cpu(trainer.optimizer.state_dict()),
        "scaler": _on_cpu(trainer.scaler.state_dict()),
        "training": trainer.model.training,
        "rng": rng_state(),
        "ema": _on_cpu(trainer.ema.state_dict()) if trainer.ema is not None else None,
    }


def put_back(trainer, saved: dict) -> None:
    """The state of snapshot() back in the trainer, exactly. The grad scaler is made anew: one cut off
    inside a step (out of memory) remembers that step and would refuse the next."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scaler = torch.amp.GradScaler(trainer.device.type, enabled=trainer.scaler.is_enabled())
    trainer.scaler.load_state_dict(saved["scaler"])
    trainer.model.train(saved["training"])
    if saved["ema"] is not None:
        trainer.ema.load_state_dict(saved["ema"])
    set_rng_state(saved["rng"])
    trainer.train_loader.set_epoch(trainer.epoch)


@contextlib.contextmanager
def kept_state(trainer):
    """Run a trial on the trainer and put it back as it was, also after an error: a range test or a
    memory probe must not leave a half-trained model behind."""
    saved = snapshot(trainer)
    try:
        yield
    finally:
        put_back(trainer, saved)


def _on_cpu(state):
    """A deep copy with every tensor on the CPU: a copy on the GPU would take memory a trial measures.
    Loading it back copies into the model's tensors, and the optimizer moves its state to its params."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        out = type(state)((k, _on_cpu(v)) for k, v in state.items())
        if hasattr(state, "_metadata"):  # a module's state dict keeps its layers' versions here
            out._metadata = copy.deepcopy(state._metadata)
        return out
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(v) for v in state)
    return copy.deepcopy(state)
