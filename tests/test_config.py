"""DataConfig: validated once, round-trips through YAML, and unknown settings are named."""

from __future__ import annotations

import pytest
import yaml

from imgclf import AugmentConfig, DataConfig, ImgclfError, load_data
from imgclf.config import from_dict, to_dict


def test_yaml_round_trip():
    config = DataConfig(image_size=(32, 48), channels=3, augment=AugmentConfig(erasing=0.25))
    again = from_dict(DataConfig, yaml.safe_load(yaml.safe_dump(to_dict(config))))
    assert again == config and again.target_size() == (32, 48) and again.augment.erasing == 0.25


@pytest.mark.parametrize("bad, word", [({"resize": "stretch"}, "resize"), ({"channels": 2}, "channels"),
                                       ({"image_size": 4}, "too small"), ({"val_fraction": -0.1}, "val_fraction"),
                                       ({"interpolation": "nearest"}, "interpolation"), ({"crop_fraction": 1.2}, "crop_fraction"),
                                       ({"resize": "pad", "crop_fraction": 0.875}, "use one of them")])
def test_invalid_values_are_refused(bad, word):
    with pytest.raises(ImgclfError, match=word):
        DataConfig(**bad)


def test_unknown_settings_are_named():
    with pytest.raises(ImgclfError, match="imagesize"):
        from_dict(DataConfig, {"imagesize": 3})
    with pytest.raises(ImgclfError, match="imagesize"):
        load_data("digits", imagesize=3)
