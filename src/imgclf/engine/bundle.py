"""The deployable bundle: model.safetensors + model.json, everything prediction needs, no pickle.

model.json (a BundleSpec) names the architecture and its arguments, the classes, the preprocessing, how
the model was trained, its final metrics and the versions, so that a model is rebuilt from the bundle alone.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from imgclf.engine.checkpoint import atomic_write
from imgclf.errors import ImgclfError
from imgclf.models.registry import Architecture
from imgclf.preprocessing import Preprocessing

BUNDLE_FORMAT = 1  # model.json's schema version: a reader takes every version up to its own


@dataclass(frozen=True)
class BundleSpec:
    """Everything model.json holds, typed: written once (save_bundle), read everywhere (prediction,
    evaluation, export, the service, init-from), so that no caller reads the file by string keys.

    The JSON layout is the one format 1 has always had (clients of model.json read it), with the
    preprocessing split into `input` and `normalization`."""

    architecture: Architecture
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    class_type: str = "str"  # "int": the labels were integers, and prediction gives them back as integers
    hflip: bool = False  # training saw mirrored images, so test-time views are meaningful to it
    tta: bool = False  # the run's own final score used test-time views
    pretrained: dict | None = None  # where the weights came from and their own preprocessing
    metrics: dict = field(default_factory=dict)
    source: str | None = None  # the training data, as the user named it (None: it was in memory)
    versions: dict = field(default_factory=dict)
    format: int = BUNDLE_FORMAT

    @property
    def labels(self) -> list:
        """The classes as prediction gives them: integers stay integers (scikit-learn's manners)."""
        return [int(c) for c in self.classes] if self.class_type == "int" else list(self.classes)

    def to_json(self) -> dict:
        pre = self.preprocessing
        return {
            "format": self.format,
            "architecture": self.architecture.to_json(),
            "classes": list(self.classes),
            "class_type": self.class_type,
            "input": {
                "channels": pre.channels,
                "size": list(pre.size),
                "resize": pre.resize,
                "interpolation": pre.interpolation,
                "crop_fraction": pre.crop_fraction,
            },
            "normalization": {"mean": list(pre.mean), "std": list(pre.std)},
            "training": {"hflip": self.hflip, "tta": self.tta},
            **({"pretrained": self.pretrained} if self.pretrained else {}),
            "preprocessing": PREPROCESSING_TEXT,
            "metrics": self.metrics,
            "source": self.source,
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, d: dict, where: str | Path = "model.json") -> BundleSpec:
        """A spec from model.json's content; keys added after format 1 began (interpolation, crop_fraction,
        class_type, training, pretrained) take what bundles written before them meant."""
        version = d.get("format")
        if not isinstance(version, int) or not 1 <= version <= BUNDLE_FORMAT:
            raise ImgclfError(
                f"{where}: bundle format {version} is not a format this imgclf reads (1 to {BUNDLE_FORMAT}); "
                "use the imgclf version that wrote it, or retrain."
            )
        try:
            training = d.get("training") or {}
            return cls(
                Architecture.from_json(d["architecture"]),
                tuple(str(c) for c in d["classes"]),
                Preprocessing.from_spec(d),
                class_type=d.get("class_type", "str"),
                hflip=bool(training.get("hflip", False)),
                tta=bool(training.get("tta", False)),
                pretrained=d.get("pretrained"),
                metrics=d.get("metrics") or {},
                source=d.get("source"),
                versions=d.get("versions") or {},
                format=version,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ImgclfError(
                f"{where}: not a complete model.json ({type(err).__name__}: {err}); the bundle is damaged, re-export it from its run."
            ) from None


PREPROCESSING_TEXT = (
    "decode, convert to the channels (gray or RGB, alpha on white), resize (input.interpolation) keeping "
    "the aspect ratio to cover size / input.crop_fraction, then centre-crop to size (or pad to it), "
    "scale to [0,1], subtract mean, divide by std; NCHW float32"
)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers, so saved keys carry no prefix."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def save_bundle(folder: Path, model: nn.Module, spec: BundleSpec) -> Path:
    """Write model.safetensors and model.json into folder, the versions of this imgclf and its libraries
    added to the spec."""
    import timm
    from safetensors.torch import save

    import imgclf

    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda f: f.write(save(state)))
    versions = {"imgclf": imgclf.__version__, "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}
    meta = dataclasses.replace(spec, versions=versions, format=BUNDLE_FORMAT).to_json()
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


def read_spec(path: str | Path) -> BundleSpec:
    """A bundle's spec alone (a service checks it before loading anything)."""
    folder = bundle_dir(path)
    try:
        content = json.loads((folder / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ImgclfError(f"{folder / 'model.json'}: unreadable ({err}); the bundle is damaged, re-export it from its run.") from None
    if not isinstance(content, dict):
        raise ImgclfError(f"{folder / 'model.json'}: not a JSON object; the bundle is damaged, re-export it from its run.")
    return BundleSpec.from_json(content, folder / "model.json")


def load_bundle(path: str | Path) -> tuple[nn.Module, BundleSpec]:
    """The model (in eval mode, on the CPU) and its spec, rebuilt from the bundle alone."""
    from safetensors.torch import load_file

    folder = bundle_dir(path)
    spec = read_spec(folder)
    model = spec.architecture.build()
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except Exception as err:
        raise ImgclfError(
            f"{folder / 'model.safetensors'}: does not load into {spec.architecture.name} ({str(err)[:160]}); the bundle is damaged."
        ) from None
    return model.eval(), spec
