"""imgclf: from a folder of images to a trained, evaluated, exported and served CNN classifier.

Attributes are imported on first use so that `import imgclf` (and decoding worker processes) stay light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "train": "imgclf.api",
    "Run": "imgclf.api",
    "lr_find": "imgclf.trials",
    "LrFind": "imgclf.trials",
    "batch_find": "imgclf.trials",
    "check_labels": "imgclf.label_review",
    "LabelReview": "imgclf.label_review",
    "report": "imgclf.api",
    "BatchFit": "imgclf.engine.batch_find",
    "Config": "imgclf.config",
    "TrainConfig": "imgclf.config",
    "load_bundle": "imgclf.engine.bundle",
    "read_spec": "imgclf.engine.bundle",
    "BundleSpec": "imgclf.engine.bundle",
    "evaluate": "imgclf.evaluation",
    "load": "imgclf.predict",
    "ImageClassifier": "imgclf.predict",
    "write_predictions": "imgclf.submission",
    "Preprocessing": "imgclf.preprocessing",
    "ServeSettings": "imgclf.serve.settings",
    "create_app": "imgclf.serve.app",
    "Evaluation": "imgclf.evaluation",
    "load_data": "imgclf.data.sources",
    "ImageData": "imgclf.data.imageset",
    "ImageSet": "imgclf.data.imageset",
    "DeviceLoader": "imgclf.data.loader",
    "DataConfig": "imgclf.config",
    "AugmentConfig": "imgclf.config",
    "create_model": "imgclf.models.registry",
    "default_model_name": "imgclf.models.registry",
    "summarize": "imgclf.models.summary",
    "freeze_backbone": "imgclf.models.transfer",
    "unfreeze": "imgclf.models.transfer",
    "param_groups": "imgclf.models.transfer",
    "ImgclfError": "imgclf.errors",
    "DataError": "imgclf.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
