"""The deployable bundle: model.safetensors + model.json, everything prediction needs, no pickle.

model.json names the architecture and its arguments, the classes, the input (channels, size, resize),
the normalisation, the final metrics and the versions, so that a model is rebuilt from the bundle alone.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from torch import nn

from imgclf.engine.checkpoint import atomic_write
from imgclf.errors import ImgclfError

BUNDLE_FORMAT = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers, so saved keys carry no prefix."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def save_bundle(folder: Path, model: nn.Module, spec: dict) -> Path:
    """Write model.safetensors and model.json into folder; spec is the model.json content."""
    from safetensors.torch import save

    import imgclf
    import timm

    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda f: f.write(save(state)))
    meta = {"format": BUNDLE_FORMAT, **spec,
            "versions": {"imgclf": imgclf.__version__, "torch": torch.__version__, "timm": timm.__version__,
                         "python": platform.python_version()}}
    atomic_write(folder / "model.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return folder


def bundle_dir(path: str | Path) -> Path:
    """A run directory or a bundle folder (or its model.json) -> the folder holding model.json."""
    path = Path(path)
    if path.name == "model.json":
        path = path.parent
    if (path / "model.json").is_file():
        return path
    raise ImgclfError(f"{path}: no model bundle there (model.json + model.safetensors); pass a run directory or a bundle folder.")


def read_spec(path: str | Path) -> dict:
    folder = bundle_dir(path)
    try:
        spec = json.loads((folder / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ImgclfError(f"{folder / 'model.json'}: unreadable ({err}); the bundle is damaged, re-export it from its run.") from None
    version = spec.get("format")
    if version != BUNDLE_FORMAT:
        raise ImgclfError(f"{folder}: bundle format {version} is not the format {BUNDLE_FORMAT} this imgclf reads; "
                          "use the imgclf version that wrote it, or retrain.")
    return spec


def load_bundle(path: str | Path) -> tuple[nn.Module, dict]:
    """The model (in eval mode, on the CPU) and its spec, rebuilt from the bundle alone."""
    from safetensors.torch import load_file

    from imgclf.models.registry import create_model

    folder = bundle_dir(path)
    spec = read_spec(folder)
    arch = spec["architecture"]
    model = create_model(arch["name"], arch["in_channels"], arch["num_classes"], tuple(arch["image_size"]), fit=False,
                         **arch.get("kwargs", {}))
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except Exception as err:
        raise ImgclfError(f"{folder / 'model.safetensors'}: does not load into {arch['name']} ({str(err)[:160]}); the bundle is damaged.") from None
    return model.eval(), spec
