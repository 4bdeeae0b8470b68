"""The end of a run, on rank 0: the kept weights scored on the test split (else validation) through the
same code as evaluate and predict, then the bundle (model.json written from one BundleSpec),
results.json, the data audit and report.html."""

from __future__ import annotations

import json
import logging

from imgclf.engine.bundle import BundleSpec
from imgclf.engine.trainer import Trainer

log = logging.getLogger("imgclf")


def finish(trainer: Trainer, source_text: str | None) -> dict | None:
    """Best weights into the model, one scoring pass (test split, else validation) for the test figures
    and the report, then the bundle, results.json and report.html (rank 0)."""
    from imgclf.engine.bundle import save_bundle, unwrap
    from imgclf.engine.checkpoint import load_checkpoint
    from imgclf.report.page import write_report

    best_path = trainer.run_dir / "checkpoints" / "best.pt"
    if best_path.exists():
        unwrap(trainer.model).load_state_dict(load_checkpoint(best_path)["model"])
    evaluation = _score(trainer)
    test = None
    data = trainer.data
    if data.test is not None and not data.test.labeled:
        log.info(
            "test: %d images without labels, not scored (the report scores the validation split); predict them with "
            "imgclf predict %s <their folder or CSV of ids>",
            len(data.test),
            trainer.run_dir,
        )
    if evaluation is not None and evaluation.split == "test":
        m = evaluation.metrics
        test = {"loss": m["loss"], "acc": m["accuracy"], "images": m["images"]}
        log.info(
            "test: loss %.4f  accuracy %.2f%% on %d images (weights of epoch %d)",
            test["loss"],
            100 * test["acc"],
            test["images"],
            trainer.best["epoch"],
        )
    metrics = {
        "best_epoch": trainer.best["epoch"],
        "best_val_acc": trainer.best["val_acc"] if trainer.val_loader else None,
        "epochs": trainer.epoch,
        "test_loss": test["loss"] if test else None,
        "test_acc": test["acc"] if test else None,
        "train_seconds": round(sum(r["seconds"] for r in trainer.history), 2),
        "tta": trainer.tta,
        "processes": trainer.world.world_size,
        **({"compile_seconds": round(trainer.compile_seconds, 2)} if trainer.config.train.compile else {}),
        **({"probe": probe} if (probe := _probe_result(trainer)) else {}),
    }
    save_bundle(trainer.run_dir, trainer.model, _spec(trainer, metrics, source_text))
    (trainer.run_dir / "results.json").write_text(json.dumps(metrics, indent=2))
    if evaluation is not None:
        log.info("report: %s", write_report(trainer.run_dir, evaluation, data.summary(), _audit(trainer)))
    else:
        log.info("no labeled test or validation images: no report")
    return test


def _probe_result(trainer: Trainer) -> dict:
    """What the linear probe scored before fine-tuning (empty without one)."""
    return next((cb.state_dict() for cb in trainer.callbacks if cb.key == "probe"), {})


def _audit(trainer: Trainer):
    """The data audit for the report, its findings written to audit.csv in the run directory."""
    from imgclf.data.audit import audit

    result = audit(trainer.data)
    result.write_csv(trainer.run_dir / "audit.csv")
    return result


def _score(trainer: Trainer):
    """The Evaluation of the test split when it is labeled, else of validation; None without either. The
    whole split, on rank 0."""
    from imgclf.engine.bundle import unwrap
    from imgclf.evaluation import Evaluation, compute_metrics
    from imgclf.predict import ImageClassifier

    d = trainer.data
    split, part = ("test", d.test) if trainer.test_loader is not None else ("val", d.val)
    if part is None or not len(part):
        return None
    clf = ImageClassifier.from_model(
        unwrap(trainer.model), _spec(trainer), device=trainer.device, batch_size=trainer.eval_batch, tta=trainer.tta
    )
    probs = clf.predict_split(part)
    metrics = {**compute_metrics(part.labels, probs, d.classes, part.origins), "split": split, "tta": trainer.tta}
    return Evaluation(d.classes, split, part, probs, metrics)


def _spec(trainer: Trainer, metrics: dict | None = None, source_text: str | None = None) -> BundleSpec:
    """The bundle's spec of this run: what the run's own final score predicts with, and what model.json holds."""
    from imgclf.engine.transfer_recipe import weights_preprocessing

    d = trainer.data
    integers = all(c.lstrip("-").isdigit() and str(int(c)) == c for c in d.classes)
    pre = weights_preprocessing(trainer.config)
    weights = (
        {
            "from": trainer.config.train.weights or "published weights (hub)",
            "preprocessing_of": pre.tag,
            "interpolation": pre.interpolation,
            "crop_pct": pre.crop_pct,
        }
        if pre is not None
        else None
    )
    return BundleSpec(
        trainer.arch,
        tuple(d.classes),
        trainer.preprocessing,
        class_type="int" if integers else "str",
        hflip=trainer.hflip,
        tta=trainer.tta,
        pretrained=weights,
        metrics=metrics or {},
        source=source_text,
    )
