"""model.json as one typed spec: written once, read back whole, and bundles of earlier versions still load
with what they meant."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import imgclf
from imgclf.engine.bundle import BUNDLE_FORMAT, BundleSpec, read_spec
from imgclf.errors import ImgclfError


def test_the_spec_round_trips_through_model_json(tiny_bundle):
    spec = read_spec(tiny_bundle)
    assert isinstance(spec, BundleSpec) and spec.format == BUNDLE_FORMAT
    assert BundleSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    # what the run itself decided, typed
    assert spec.architecture.name == "small_resnet" and spec.architecture.image_size == (28, 28)
    assert spec.preprocessing.shape == (1, 28, 28) and spec.classes == tuple(str(i) for i in range(10))
    assert spec.class_type == "int" and spec.labels == list(range(10))  # integer labels come back as integers
    assert spec.versions["imgclf"] == imgclf.__version__ and spec.metrics["epochs"] == 1 and spec.source is None


def test_a_bundle_written_before_the_later_keys_loads_with_their_old_meaning(tiny_bundle, fmnist_small, tmp_path):
    """Format 1's first bundles had no interpolation, crop_fraction, class_type, training or pretrained:
    they decoded bilinearly on the whole square, gave string labels and were never averaged over views."""
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old, ignore=shutil.ignore_patterns("checkpoints"))
    content = json.loads((old / "model.json").read_text())
    for key in ("class_type", "training", "pretrained", "versions"):
        content.pop(key, None)
    for key in ("interpolation", "crop_fraction"):
        content["input"].pop(key)
    (old / "model.json").write_text(json.dumps(content))
    spec = read_spec(old)
    assert (spec.preprocessing.interpolation, spec.preprocessing.crop_fraction) == ("bilinear", 1.0)
    assert spec.class_type == "str" and not spec.hflip and not spec.tta and spec.pretrained is None
    images = fmnist_small[0][:16]
    now, then = imgclf.load(tiny_bundle, device="cpu"), imgclf.load(old, device="cpu", tta=True)
    assert not then.tta  # asked for, but a model without flips in training gets none
    assert np.allclose(now.predict_proba(images), then.predict_proba(images), atol=1e-6)
    assert then.predict(images) == [str(c) for c in now.predict(images)]


@pytest.mark.parametrize("damage, said", [({"format": 99}, "bundle format 99"), ({"format": "1"}, "bundle format 1"),
                                          ({"classes": None}, "not a complete model.json"),
                                          ({"architecture": {"name": "small_resnet"}}, "not a complete model.json")])
def test_a_damaged_spec_is_one_line_naming_the_file(tiny_bundle, tmp_path, damage, said):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad, ignore=shutil.ignore_patterns("checkpoints"))
    content = {**json.loads((bad / "model.json").read_text()), **damage}
    (bad / "model.json").write_text(json.dumps(content))
    with pytest.raises(ImgclfError, match=said) as err:
        imgclf.load(bad)
    assert "model.json" in str(err.value) and "\n" not in str(err.value)
