"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image


def run(*args):
    return subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_inspect_folder_with_grid(class_tree, tmp_path):
    grid = tmp_path / "grid.png"
    first = run("data", "inspect", str(class_tree), "--grid", str(grid))
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "class folders" in out and "tshirt" in out and "built now" in out
    assert "28x28 (300)" in out and "L (300)" in out
    with Image.open(grid) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 300
    second = run("data", "inspect", str(class_tree))
    assert "hit: nothing decoded" in second.stdout


@pytest.mark.slow
def test_inspect_builtin_and_csv(csv_layout):
    out = run("data", "inspect", "digits").stdout
    assert "off (they change what the images mean)" in out and "1 channel(s) x 8x8" in out
    csv_out = run("data", "inspect", str(csv_layout), "--image-size", "32").stdout
    assert "CSV of ids and labels with train/test splits" in csv_out and "unlabeled: test 50" in csv_out
    assert "32x32" in csv_out and "sample_submission.csv" in csv_out


def test_bad_flag_value_is_one_line():
    proc = run("data", "inspect", "digits", "--resize", "stretch")
    assert proc.returncode == 2 and "resize='stretch' is not one of crop, pad" in proc.stderr and "Traceback" not in proc.stderr


def test_every_setting_is_a_flag_of_train_with_its_own_type_default_and_help():
    """The flags are built from the config fields: each field of the three sections is a flag of `imgclf train`
    that parses to the field's type, leaves the field alone when unset (None), and shows the field's
    default; no flag of train is anything but a field or one of the command's own."""
    import argparse
    import dataclasses
    import typing

    from imgclf.cli import build_parser
    from imgclf.config import AugmentConfig, DataConfig, TrainConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = {a.dest: a for a in sub.choices["train"]._actions}
    fields = {}
    for section in (DataConfig, AugmentConfig, TrainConfig):
        hints = typing.get_type_hints(section)
        fields.update({f.name: (f, hints[f.name]) for f in dataclasses.fields(section)
                       if "help" in f.metadata})  # DataConfig.augment is a section, not a setting
    assert set(train) - set(fields) == {"help", "source", "config", "resume", "nproc"}
    for name, (f, hint) in fields.items():
        action = train[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-") and action.default is None, name
        assert f.metadata["help"] and action.help.startswith(f.metadata["help"].replace("%", "%%")), name
        kinds = typing.get_args(hint) or (hint,)
        if bool in kinds:
            assert isinstance(action, argparse.BooleanOptionalAction), name
            continue
        assert action.type in kinds, name
        if f.default is not None:
            shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
            assert action.help.endswith(f"(default: {shown})"), name
            assert action.type(shown) == f.default, name  # the default as shown parses back to the field's
    args = parser.parse_args(["train", "src", "--lr", "0.01", "--no-hflip", "--image-size", "64", "--strict"])
    assert (args.lr, args.hflip, args.image_size, args.strict, args.epochs) == (0.01, False, 64, True, None)
