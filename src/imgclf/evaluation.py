"""Scoring a trained model on labeled images: the figures a person asks for after training.

Loss, top-1 and top-k accuracy, per-class precision/recall/F1/support with macro and weighted averages,
the confusion matrix, the most confused pairs and the highest-loss examples. The formulas are
scikit-learn's; this module gathers predictions and arranges the answers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.data.imageset import ImageData, ImageSet
from imgclf.errors import ImgclfError

log = logging.getLogger("imgclf")
TOP_LOSSES = 16
CONFUSED_PAIRS = 10


@dataclass
class Evaluation:
    """Predictions on one labeled split and the metrics computed from them."""

    classes: list[str]
    split: str
    images: ImageSet
    probs: np.ndarray  # N x K softmax
    metrics: dict

    @property
    def labels(self) -> np.ndarray:
        return self.images.labels

    def __repr__(self) -> str:
        return f"Evaluation({self.split} split, {len(self.images)} images, accuracy {self.metrics['accuracy']:.2%})"

    def table(self) -> str:
        return format_report(self.metrics)

    def save_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.metrics, indent=2))
        return path


def compute_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str], origins: list[str] | None = None) -> dict:
    """Every figure of the report, from true labels and predicted probabilities."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

    k_all = list(range(len(classes)))
    broken = ~np.isfinite(probs).all(1) if probs.size else np.zeros(len(labels), bool)
    if broken.any():  # a diverged model: its scores are chance, said once, instead of a crash in the metrics
        log.warning(
            "%d of %d images got non-finite scores: the model's weights have diverged (NaN or inf); they count as "
            "uniform guesses here; retrain with a lower --lr",
            int(broken.sum()),
            len(labels),
        )
        probs = probs.copy()
        probs[broken] = 1.0 / len(classes)
    pred = probs.argmax(1)
    per_sample_loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    p, r, f1, support = precision_recall_fscore_support(labels, pred, labels=k_all, zero_division=0)
    averages = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(labels, pred, labels=k_all, average=avg, zero_division=0)
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af), "support": int(len(labels))}
    cm = confusion_matrix(labels, pred, labels=k_all)
    off = [(int(cm[i, j]), i, j) for i in k_all for j in k_all if i != j and cm[i, j]]
    pairs = [{"true": classes[i], "predicted": classes[j], "count": n} for n, i, j in sorted(off, reverse=True)[:CONFUSED_PAIRS]]
    worst = np.argsort(-per_sample_loss, kind="stable")[:TOP_LOSSES]
    metrics = {
        "images": int(len(labels)),
        **({"non_finite": int(broken.sum())} if broken.any() else {}),
        "loss": float(per_sample_loss.mean()),
        "accuracy": float(accuracy_score(labels, pred)),
        "per_class": [
            {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        ],
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "confusion_matrix": cm.tolist(),
        "most_confused": pairs,
        "top_losses": [
            {
                "index": int(i),
                "origin": origins[i] if origins else str(int(i)),
                "true": classes[labels[i]],
                "predicted": classes[pred[i]],
                "confidence": float(probs[i, pred[i]]),
                "loss": float(per_sample_loss[i]),
            }
            for i in worst
        ],
    }
    if len(classes) > 5:
        metrics["top5_accuracy"] = float(top_k_accuracy_score(labels, probs, k=5, labels=k_all))
    return metrics


def format_report(m: dict) -> str:
    """The classification report as scikit-learn prints it, with the headline figures above it."""
    width = max(12, *(len(r["class"]) for r in m["per_class"]))
    head = f"{'':>{width}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>9}"
    row = lambda name, r: f"{name:>{width}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  {r['f1']:>9.4f}  {r['support']:>9}"
    lines = [m["scored"]] if m.get("scored") else []
    lines += [
        f"images {m['images']}  loss {m['loss']:.4f}  accuracy {100 * m['accuracy']:.2f}%"
        + (f"  top-5 accuracy {100 * m['top5_accuracy']:.2f}%" if "top5_accuracy" in m else ""),
        "",
        head,
        "",
    ]
    lines += [row(r["class"], r) for r in m["per_class"]]
    lines += ["", row("macro avg", m["macro_avg"]), row("weighted avg", m["weighted_avg"])]
    if m["most_confused"]:
        lines += ["", "most confused (true -> predicted: count):"]
        lines += [f"  {p['true']} -> {p['predicted']}: {p['count']}" for p in m["most_confused"][:5]]
    return "\n".join(lines)


def _labeled_split(data: ImageData, split: str | None, held_out: bool) -> tuple[str, ImageSet]:
    """The split to score: the one asked for, else test, else validation; training images only on request
    when the data is the run's own (they are what it learnt from)."""
    splits = data.splits()
    choice: str | None
    if split:
        if split not in splits:
            raise ImgclfError(f"the data has no {split} split (it has {', '.join(splits)}); choose one of those.")
        choice = split
    else:
        order = ("test", "val") if held_out else ("test", "val", "train")
        choice = next((s for s in order if s in splits and splits[s].labeled), None)
        if choice is None and held_out:
            raise ImgclfError(
                f"{data.source}: the run held out no labeled images (no test split, no validation split); score other "
                "data, or pass --split train to score the training images (optimistic: the model learnt them)."
            )
        if choice is None:
            raise ImgclfError(f"{data.source}: no labeled images to score; evaluation needs labels.")
    if not splits[choice].labeled:
        raise ImgclfError(f"the {choice} split of {data.source} has no labels; evaluation needs labeled images.")
    return choice, splits[choice]


def _what_is_scored(choice: str, n: int, source: str, held_out: bool, info: dict) -> str:
    """The first line of an evaluation: which images, and what their score means."""
    if choice == "train" and held_out:
        return f"scoring the {n} training images of {source} (--split train): the model learnt them, so the figures are optimistic"
    if choice == "val" and held_out:
        origin = info.get("splits", {}).get("val", {})
        how = f" ({origin['fraction']:.0%} of training, seed {origin['seed']})" if origin.get("from") == "train" else ""
        return f"scoring the validation split the run held out{how}: {n} images of {source}"
    what = {"test": "the test split", "val": "the validation split", "train": "all the images"}[choice]
    return f"scoring {what} of {source}: {n} images"


def _relation(given, recorded: str | None) -> str | None:
    """'same' when given names the run's own dataset (its folder, or a CSV in it), 'part' when one holds
    the other (a split folder of it, say: training images among those scored), else None."""
    from imgclf.data.sources import dataset_root

    if recorded is None or not isinstance(given, (str, Path)):
        return None
    a, b = dataset_root(given), dataset_root(recorded)
    if a == b:
        return "same"
    if a and b and Path(a).is_absolute() and Path(b).is_absolute() and (Path(a).is_relative_to(b) or Path(b).is_relative_to(a)):
        return "part"
    return None


def _run_record(folder: Path) -> tuple[dict | None, dict, dict[str, str]]:
    """The data settings and run.json of the run a bundle belongs to, when it sits in its run directory,
    and its separate validation and test sources (--val, --test) by split."""
    from imgclf.config import Config, to_dict

    if not (folder / "config.yaml").is_file():
        return None, {}, {}
    info = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    config = Config.from_yaml(folder / "config.yaml")
    separate = {what: str(src) for what in ("val", "test") if (src := getattr(config.train, what))}
    return to_dict(config.data), info, separate


def evaluate(
    model_or_run, data=None, *, split: str | None = None, batch_size: int | None = None, tta: bool | None = None, device: str = "auto"
) -> Evaluation:
    """Score a run directory, a bundle, or a Run on data: a source (folder, CSV, built-in name) or ImageData.

    On the run's own source (the default when data is None), the images it held out are scored: its test
    split when labeled (the --test source it was given, if any), else the validation split it used
    (rebuilt from its seed, or its --val source); the training images only with split='train'. Other
    data is brought to the model's input (channels, size, resize) from the bundle and its test split
    scored, else validation, else all of it.
    """
    from imgclf.config import DataConfig
    from imgclf.data.sources import load_data, with_separate_split
    from imgclf.engine.bundle import bundle_dir, load_bundle
    from imgclf.engine.hardware import pick_device
    from imgclf.predict import ImageClassifier

    if hasattr(model_or_run, "run_dir"):
        model_or_run = model_or_run.run_dir
    model, spec = load_bundle(model_or_run)
    data_settings, info, separate = _run_record(bundle_dir(model_or_run))
    relation = None if isinstance(data, ImageData) else _relation(data, info.get("source", spec.source))
    own = data is None or relation == "same"
    if data is None and not (info.get("source") or spec.source):
        raise ImgclfError(f"{model_or_run}: its training data was in memory; pass the data to score.")
    if isinstance(data, ImageData):
        held_out = data.val_from is not None
    elif own:
        source = info.get("source") or spec.source
        settings = data_settings or spec.preprocessing.data_settings()
        if "val" in separate:  # training held no share of its images out: the validation images came apart
            settings = {**settings, "val_fraction": 0.0}
        data = load_data(source, **settings)
        for what, extra in separate.items():  # the --val/--test sources the run was given: what it scored
            data = with_separate_split(data, what, extra, DataConfig(**settings))
        held_out = True
        _warn_if_changed(data, info)
    else:
        data = load_data(data, **spec.preprocessing.data_settings(), val_fraction=0.0)
        held_out = False
    choice, part = _labeled_split(data, split, held_out)
    classes = list(spec.classes)
    part = part.relabel(data.classes, classes, "model's classes")
    # tta unset: as the run's own final score was made, so that the figures agree with results.json
    clf = ImageClassifier.from_model(
        model, spec, device=pick_device(device), batch_size=batch_size, tta=spec.tta if tta is None else tta, name=str(model_or_run)
    )
    probs = clf.predict_split(part)
    metrics = compute_metrics(part.labels, probs, classes, part.origins)
    scored = _what_is_scored(choice, len(part), data.source, held_out, info)
    if relation == "part":
        scored += (
            f" (part of the run's own source {info.get('source', spec.source)}: images it trained on may be among "
            "them, so the figures may be optimistic; evaluate without a source to score what it held out)"
        )
    metrics.update(split=choice, tta=clf.tta, model=str(model_or_run), scored=scored)
    return Evaluation(classes, choice, part, probs, metrics)


def _warn_if_changed(data: ImageData, info: dict) -> None:
    """The held-out split is rebuilt from the source; if the source changed since training, it is another one."""
    for what, part in (("val", data.val), ("test", data.test)):
        then = info.get("splits", {}).get(what, {}).get("images")
        if then is not None and part is not None and then != len(part):
            log.warning(
                "%s has changed since training (%s split: %d images then, %d now): the images scored are not exactly "
                "the ones the run held out",
                data.source,
                what,
                then,
                len(part),
            )
