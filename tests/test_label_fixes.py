"""--relabel and --drop: a user's corrections applied to the loaded splits (no cache rebuilt), from
label_issues.csv as the label check writes it or a plain path,label file; stale files are one line."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from imgclf.data.imageset import ImageSet
from imgclf.data.label_fixes import apply_fixes
from imgclf.data.sources import load_data
from imgclf.errors import DataError


def _write(path: Path, rows: list[list], header: list[str] | None = None) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture()
def tree_data(class_tree):
    return load_data(str(class_tree), val_fraction=0.2)


def _label_of(data, path: str) -> int:
    for part in data.splits().values():
        origins = part.origins
        if path in origins:
            return int(part.labels[origins.index(path)])
    raise KeyError(path)


def test_relabel_takes_label_issues_csv_as_written(tree_data, tmp_path):
    a, b = tree_data.train.origins[0], tree_data.val.origins[0]
    new_a, new_b = [(_label_of(tree_data, p) + 3) % 10 for p in (a, b)]
    header = ["rank", "path", "given", "suggested", "confidence", "given_confidence"]
    rows = [[1, a, "x", tree_data.classes[new_a], 0.9, 0.01], [2, b, "x", tree_data.classes[new_b], 0.8, 0.02]]
    fixed, info = apply_fixes(tree_data, _write(tmp_path / "label_issues.csv", rows, header), None)
    assert info["relabeled"] == 2
    assert _label_of(fixed, a) == new_a and _label_of(fixed, b) == new_b  # training and validation alike
    assert len(fixed.train) == len(tree_data.train) and len(fixed.val) == len(tree_data.val)
    changed = int((fixed.train.labels != tree_data.train.labels).sum() + (fixed.val.labels != tree_data.val.labels).sum())
    assert changed == 2
    assert fixed.cache_dir == tree_data.cache_dir


def test_a_label_column_overrides_suggested_and_a_kept_label_is_no_change(tree_data, tmp_path):
    a, b = tree_data.train.origins[:2]
    keep_b = tree_data.classes[_label_of(tree_data, b)]
    other = tree_data.classes[(_label_of(tree_data, a) + 1) % 10]
    rows = [[a, "bag", other], [b, "bag", keep_b]]
    fixed, info = apply_fixes(tree_data, _write(tmp_path / "edited.csv", rows, ["path", "suggested", "label"]), None)
    assert info["relabeled"] == 1
    assert fixed.classes[_label_of(fixed, a)] == other
    assert fixed.classes[_label_of(fixed, b)] == keep_b


def test_headerless_rows_with_paths_relative_to_the_working_folder(tree_data, tmp_path, monkeypatch):
    a = Path(tree_data.train.origins[5])
    monkeypatch.chdir(a.parent.parent)
    target = (_label_of(tree_data, str(a)) + 1) % 10
    fixed, info = apply_fixes(tree_data, _write(tmp_path / "r.csv", [[f"{a.parent.name}/{a.name}", tree_data.classes[target]]]), None)
    assert info["relabeled"] == 1 and _label_of(fixed, str(a)) == target


def test_drop_leaves_the_listed_images_out_of_every_split(tree_data, tmp_path):
    gone = [tree_data.train.origins[0], tree_data.train.origins[7], tree_data.val.origins[1]]
    fixed, info = apply_fixes(tree_data, None, _write(tmp_path / "d.csv", [[p] for p in gone], ["path"]))
    assert info["dropped"] == 3
    assert len(fixed.train) == len(tree_data.train) - 2 and len(fixed.val) == len(tree_data.val) - 1
    assert not set(gone) & set(fixed.train.origins + fixed.val.origins)
    kept = [o for o in tree_data.train.origins if o not in gone]
    assert fixed.train.origins == kept
    assert np.array_equal(fixed.train.labels, [tree_data.train.labels[tree_data.train.origins.index(o)] for o in kept])


def test_builtin_ids_are_matched_as_they_are(digits, tmp_path):
    data = load_data("digits", val_fraction=0.0)
    first = data.train.origins[3]
    assert first.startswith("digits:train:")
    fixed, info = apply_fixes(data, None, _write(tmp_path / "d.txt", [[first]]))
    assert info["dropped"] == 1 and first not in fixed.train.origins


def test_stale_and_wrong_files_are_one_line_each(tree_data, tmp_path):
    a = tree_data.train.origins[0]
    cases = [
        (_write(tmp_path / "u.csv", [["/nowhere/x.png", tree_data.classes[0]]], ["path", "label"]), None, "not among the images"),
        (_write(tmp_path / "c.csv", [[a, "Banana"]], ["path", "label"]), None, "classes the data does not have (Banana)"),
        (_write(tmp_path / "n.csv", [[a, tree_data.classes[0]]], ["path", "colour"]), None, "'label' (or 'suggested') column"),
        (str(tmp_path / "missing.csv"), None, "no such file"),
        (None, _write(tmp_path / "all.csv", [[p] for p in tree_data.splits()["train"].origins], ["path"]), "every training image"),
        (None, _write(tmp_path / "ud.csv", [["/nowhere/y.png"]], ["path"]), "/nowhere/y.png"),
    ]
    for relabel, drop, words in cases:
        with pytest.raises(DataError) as err:
            apply_fixes(tree_data, relabel, drop)
        text = str(err.value)
        assert words in text and "\n" not in text
        assert (relabel or drop) in text


def test_a_split_with_its_own_images_is_matched_by_its_own_paths(tmp_path):
    """A built-in test split has its own array and origins: a training path's row number must not take the
    test image of the same number with it."""
    data = load_data("digits", val_fraction=0.0)
    test = dataclasses.replace(data.train, index=data.train.index[:50].copy())
    test = ImageSet(data.train.images, test.index, data.train.labels[:50], [o.replace(":train:", ":test:") for o in data.train.all_origins])
    data = dataclasses.replace(data, test=test)
    gone = data.train.origins[:10]
    fixed, info = apply_fixes(data, None, _write(tmp_path / "d.csv", [[p] for p in gone], ["path"]))
    assert info["dropped"] == 10 and len(fixed.test) == 50 and len(fixed.train) == len(data.train) - 10
