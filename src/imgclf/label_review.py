"""The label check: the images whose given label out-of-sample probabilities contradict (confident
learning, data/label_issues.py, on the K folds' scores of engine/out_of_sample.py), with what a person
needs to judge each one: a table, label_issues.csv, JSON, the gallery (report/label_page.py), and the
counts `data inspect` shows later.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.config import Config, parse_duration
from imgclf.data.imageset import ImageData, ImageSet
from imgclf.data.label_issues import FILTERS, FOLDS, RANKINGS, LabelIssues, find_label_issues
from imgclf.engine.out_of_sample import OutOfSample, check_folds, clock, out_of_sample
from imgclf.errors import DataError

NEIGHBOURS = 3  # per suspect and class, on the gallery
SHOWN = 20  # suspects in the terminal table
# Below this share of labels matching the out-of-sample predictions, the suspects are mostly the folds' own
# errors (clip art of 7 loose classes with a probe: 71% agreement, 21% of the images suspected).
WEAK_AGREEMENT = 0.8
COLUMNS = ["rank", "path", "given", "suggested", "confidence", "given_confidence"]
SUMMARY_NAME = "label_issues.json"  # in the decode cache, where `data inspect` finds the counts


@dataclass
class LabelReview:
    """What the label check found on a source's training images, ready to show, write and act on."""

    source: str
    classes: list[str]
    images: ImageSet  # the training images checked (thumbnails)
    scored: OutOfSample
    issues: LabelIssues
    rank_by: str
    filter_by: str = FILTERS[0]
    folder: Path | None = None  # where its files go unless told (default_dir)
    neighbours: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # suspect rank -> rows of given, suggested

    def rows(self) -> list[dict]:
        """One row per suspect, most suspect first: the columns of label_issues.csv."""
        labels, probs, origins = self.images.labels, self.scored.probs, self.images.all_origins
        return [
            {
                "rank": r + 1,
                "path": origins[self.images.index[i]],
                "given": self.classes[labels[i]],
                "suggested": self.classes[s],
                "confidence": round(float(probs[i, s]), 4),
                "given_confidence": round(float(probs[i, labels[i]]), 4),
            }
            for r, (i, s) in enumerate(zip(self.issues.suspects, self.issues.suggested))
        ]

    def noise(self) -> dict:
        """Per class, the estimated share of its images that belong elsewhere, and the pairs most often mixed up."""
        joint, counts = self.issues.joint, np.bincount(self.images.labels, minlength=len(self.classes))
        rates = self.issues.noise_rates
        pairs = [
            {"given": self.classes[i], "likely": self.classes[j], "share_of_given": round(float(joint[i, j] / joint[i].sum()), 4)}
            for i, j in zip(*np.nonzero(joint * (1 - np.eye(len(self.classes)))))
            if joint[i].sum() > 0
        ]
        pairs.sort(key=lambda p: -p["share_of_given"])
        return {
            "per_class": [
                {"class": c, "images": int(counts[k]), "noise_rate": round(float(rates[k]), 4)} for k, c in enumerate(self.classes)
            ],
            "most_confused": pairs[:10],
            "joint": [[round(float(v), 5) for v in row] for row in joint],
        }

    def to_json(self) -> dict:
        n = len(self.images)
        return {
            "source": self.source,
            "images": n,
            "suspects": len(self.issues.suspects),
            "share": round(len(self.issues.suspects) / max(n, 1), 5),
            "method": self.scored.method,
            "seconds": round(self.scored.seconds, 1),
            "rank_by": self.rank_by,
            "filter_by": self.filter_by,
            "classes": self.classes,
            "thresholds": [round(float(t), 4) for t in self.issues.thresholds],
            "noise": self.noise(),
            "rows": self.rows(),
        }

    def summary_line(self) -> str:
        n, found = len(self.images), len(self.issues.suspects)
        return f"{found:,} of {n:,} training images ({found / max(n, 1):.1%}) look mislabeled ({self.scored.method})"

    def table(self, top: int = SHOWN) -> str:
        """What the terminal shows: the method, the count, the top suspects, the noise per class and pair."""
        rows = self.rows()
        lines = [f"label check of {self.source}: {self.summary_line()}, {clock(self.scored.seconds)}; suspects by {self.filter_by}"]
        if rows:
            name_w = max(5, *(len(c) for c in self.classes))
            lines.append(f"  {'rank':>5}  {'given':<{name_w}}  {'suggested':<{name_w}}  {'p(sugg.)':>8}  {'p(given)':>8}  path")
            for r in rows[:top]:
                lines.append(
                    f"  {r['rank']:>5}  {r['given']:<{name_w}}  {r['suggested']:<{name_w}}  {r['confidence']:>8.3f}  "
                    f"{r['given_confidence']:>8.3f}  {r['path']}"
                )
            if len(rows) > top:
                lines.append(f"  ... and {len(rows) - top:,} more")
        agree = float((self.scored.probs.argmax(1) == self.images.labels).mean())
        if agree < WEAK_AGREEMENT:
            stronger = (
                "" if "probe" in self.scored.method else ", and give pretrained weights (--pretrained or --weights) for a stronger check"
            )
            lines.append(
                f"the folds agree with only {agree:.0%} of the labels: many suspects are the model's own mistakes, not "
                f"wrong labels; look at the gallery before acting{stronger}"
            )
        noise = self.noise()
        worst = sorted(noise["per_class"], key=lambda c: -c["noise_rate"])[:5]
        lines.append("estimated share filed under the wrong class: " + ", ".join(f"{c['class']} {c['noise_rate']:.1%}" for c in worst))
        if noise["most_confused"]:
            lines.append(
                "most confused (given -> likely, share of the given class): "
                + ", ".join(f"{p['given']} -> {p['likely']} {p['share_of_given']:.1%}" for p in noise["most_confused"][:5])
            )
        return "\n".join(lines)

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.csv_text(), encoding="utf-8")
        return path

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    def find_neighbours(self, top: int) -> None:
        """For the first `top` suspects: the nearest training images (cosine, in the features of the fold
        that scored the suspect) labeled with its given class and with its suggested class."""
        feats = self.scored.features / np.maximum(np.linalg.norm(self.scored.features, axis=1, keepdims=True), 1e-12)
        labels, space = self.images.labels, self.scored.space
        for rank, (i, s) in enumerate(zip(self.issues.suspects[:top], self.issues.suggested[:top])):
            same = space == space[i]
            sim = feats @ feats[i]
            sim[i] = -np.inf
            pick = []
            for c in (labels[i], s):
                rows = np.flatnonzero(same & (labels == c))
                pick.append(rows[np.argsort(-sim[rows], kind="stable")[:NEIGHBOURS]])
            self.neighbours[rank] = (pick[0], pick[1])


def review(
    data: ImageData,
    config: Config,
    *,
    folds: int = FOLDS,
    seconds: float | None = None,
    rank_by: str = RANKINGS[0],
    filter_by: str = FILTERS[0],
) -> LabelReview:
    """The label check of data's training split (already loaded and resolved as training would)."""
    _check_choices(rank_by, filter_by)
    scored = out_of_sample(data, config, folds, seconds)
    issues = find_label_issues(data.train.labels, scored.probs, rank_by, filter_by)
    return LabelReview(data.source, data.classes, data.train, scored, issues, rank_by, filter_by)


def _check_choices(rank_by: str, filter_by: str) -> None:
    """Before the folds train (and, from check_labels, before any image is read)."""
    for value, known, flag in ((rank_by, RANKINGS, "--rank-by"), (filter_by, FILTERS, "--filter-by")):
        if value not in known:
            raise DataError(f"{flag} {value}: choose one of {', '.join(known)}.")


def check_labels(
    data=None,
    config: Config | None = None,
    *,
    folds: int = FOLDS,
    rank_by: str = RANKINGS[0],
    filter_by: str = FILTERS[0],
    **settings,
) -> LabelReview:
    """`imgclf data labels`: load a source as training would (every training image, none held out for
    validation), score each image out of sample, and find the labels the scores contradict. Settings are
    training's (pretrained=, weights=, model=, epochs=, time=, image_size=, relabel=, drop=, ...): the folds
    train as it would; time= bounds the folds' training."""
    from imgclf.api import load_plan_data
    from imgclf.data.cache import cache_root
    from imgclf.logs import ensure_console
    from imgclf.preflight import plan_run

    ensure_console()
    check_folds(folds)
    _check_choices(rank_by, filter_by)
    settings = {k: v for k, v in settings.items() if k not in ("name", "force", "drop_label_issues")}
    settings.setdefault("val_fraction", 0.0)
    plan = plan_run(data, config, None, settings)
    budget = plan.config.train.time
    loaded = load_plan_data(plan)
    seconds = parse_duration(budget) if budget else None
    found = review(loaded, plan.config, folds=folds, seconds=seconds, rank_by=rank_by, filter_by=filter_by)
    found.folder = default_dir(loaded.source, loaded.cache_dir, cache_root(plan.config.data))
    return found


def default_dir(data_source: str, cache_dir: Path | None, cache_root: Path) -> Path:
    """Where the check's files go unless told: beside skipped.csv in the decode cache (where `data inspect`
    looks for them), or under the cache root for sources without one (built-in datasets, arrays)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from imgclf.data.cache import slug

    return cache_root / "label-checks" / slug(Path(data_source).name)


def read_summary(folder: Path | None) -> dict | None:
    """The counts of the last label check written to `folder`, or None."""
    if folder is None or not (Path(folder) / SUMMARY_NAME).is_file():
        return None
    try:
        found = json.loads((Path(folder) / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "suspects" in found else None
