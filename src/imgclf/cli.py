"""The imgclf command line: parses flags into the config and calls the Python API; no logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from pathlib import Path

from imgclf.config import AugmentConfig, DataConfig, TrainConfig
from imgclf.data.label_issues import FILTERS, FOLDS, RANKINGS
from imgclf.errors import ImgclfError, one_line
from imgclf.serve.settings import FLAG_HELP as SERVE_FLAGS
from imgclf.serve.settings import ServeSettings

SERVE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServeSettings)}

log = logging.getLogger("imgclf")


def flags_of(section: type) -> dict[str, tuple[object, str]]:
    """A config section's flags, (type, help) by field name, from its fields: the field's type, and the help
    config.setting() gave it, with "(default: X)" added when the default is a value. Every flag defaults
    to None, so that an unset flag leaves the field to the config file, the preset or the recipe."""
    hints = typing.get_type_hints(section)
    flags: dict[str, tuple[object, str]] = {}
    for f in dataclasses.fields(section):
        if "help" not in f.metadata:
            continue
        kinds = set(typing.get_args(hints[f.name])) - {type(None)} or {hints[f.name]}
        kind = next(k for k in (bool, int, float, str) if k in kinds)
        text = f.metadata["help"]
        if f.default is not None and not isinstance(f.default, bool):
            text += f" (default: {f.default:g})" if isinstance(f.default, float) else f" (default: {f.default})"
        flags[f.name] = (kind, text)
    return flags


DATA_FLAGS = flags_of(DataConfig)
AUGMENT_FLAGS = flags_of(AugmentConfig)
TRAIN_FLAGS = flags_of(TrainConfig)


def _add_flags(parser: argparse.ArgumentParser, flags: dict) -> None:
    for name, (kind, text) in flags.items():
        flag = "--" + name.replace("_", "-")
        text = text.replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=text)


def _output_path(text: str, flag: str, example: str) -> Path:
    """A file a command will write, its folder created; a folder, or a file where a folder must go, is a
    one-line error instead of a traceback after the work is done."""
    path = Path(text)
    if path.is_dir():
        raise ImgclfError(f"{flag} {text} is a folder; give a file name in it, e.g. {path / example}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImgclfError(f"{flag} {text}: its folder {path.parent} cannot be made, a file is in the way; choose another path.") from None
    return path


def _given(args: argparse.Namespace, names) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(**_given(args, [f.name for f in dataclasses.fields(DataConfig)]))


def _cmd_train(args: argparse.Namespace) -> int:
    from imgclf.api import train
    from imgclf.config import Config

    if args.nproc is not None:
        return _launch_torchrun(args.nproc, args.argv)
    settings = _given(args, [*DATA_FLAGS, *AUGMENT_FLAGS, *TRAIN_FLAGS])
    if args.resume:
        run = train(args.source, resume=args.resume, **settings)
    else:
        if not args.source:
            raise ImgclfError("imgclf train needs a SOURCE (a folder, a CSV or a dataset name), or --resume RUN_DIR.")
        base = Config.from_yaml(args.config) if args.config else Config()
        run = train(args.source, base, **settings)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        print(f"run directory: {run.run_dir}")
    return 0


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """`imgclf train ... --nproc N`: the same command under torchrun on this machine, N processes."""
    import subprocess

    if nproc < 1:
        raise ImgclfError(f"--nproc {nproc}: give at least 1 process.")
    if "RANK" in os.environ:
        raise ImgclfError("--nproc starts torchrun itself; under torchrun leave it out.")
    i = next(i for i, a in enumerate(argv) if a == "--nproc" or a.startswith("--nproc="))
    rest = argv[:i] + argv[i + (1 if "=" in argv[i] else 2) :]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "imgclf", *rest]
    log.info("launching: %s", " ".join(cmd[1:]))
    from imgclf.data.parallel import usable_cpus

    cores = usable_cpus()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores // nproc)))}  # torchrun warns without it
    return subprocess.call(cmd, env=env)


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from imgclf.config import Config
    from imgclf.trials import lr_find

    if args.plot:
        _output_path(args.plot, "--plot", "lr_find.png")  # a folder, or a file in the way, fails before any work
    base = Config.from_yaml(args.config) if args.config else None
    result = lr_find(args.source, base, **_given(args, ["plot", "start", "end", "steps", *DATA_FLAGS, *AUGMENT_FLAGS, *TRAIN_FLAGS]))
    print(result.summary())
    return 0


def _cmd_batch_find(args: argparse.Namespace) -> int:
    from imgclf.config import Config
    from imgclf.trials import batch_find

    base = Config.from_yaml(args.config) if args.config else None
    print(batch_find(args.source, base, **_given(args, [*DATA_FLAGS, *AUGMENT_FLAGS, *TRAIN_FLAGS])).summary())
    return 0


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from imgclf.data.audit import audit
    from imgclf.data.cache import cache_root
    from imgclf.data.inspect import describe, save_grid
    from imgclf.data.sources import load_data
    from imgclf.label_review import default_dir, read_summary

    grid = _output_path(args.grid, "--grid", "grid.png") if args.grid else None
    data = load_data(args.source, _data_config(args))
    folder = default_dir(data.source, data.cache_dir, cache_root(_data_config(args)))
    print(describe(data, audit(data), read_summary(folder)))
    if grid:
        print(f"grid:    {save_grid(data, grid)}")
    return 0


def _cmd_data_audit(args: argparse.Namespace) -> int:
    import json

    from imgclf.data.audit import audit, csv_path
    from imgclf.data.cache import cache_root
    from imgclf.data.sources import load_data

    config = _data_config(args)
    out = _output_path(args.out, "--out", "audit.csv") if args.out else None
    as_json = _output_path(args.json, "--json", "audit.json") if args.json and args.json != "-" else None
    data = load_data(args.source, config)
    result = audit(data, near=not args.exact_only)
    written = result.write_csv(out or csv_path(data, cache_root(config)))
    if args.json == "-":
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(result.table())
    print(f"every finding: {written}")
    if as_json:
        print(f"as JSON: {result.write_json(as_json)}")
    return 0


def _cmd_data_labels(args: argparse.Namespace) -> int:
    import json

    from imgclf.config import Config
    from imgclf.label_review import SUMMARY_NAME, check_labels
    from imgclf.report.label_page import write_gallery

    out = _output_path(args.csv, "--csv", "label_issues.csv") if args.csv else None
    page = _output_path(args.html, "--html", "label_issues.html") if args.html else None
    as_json = _output_path(args.json, "--json", "label_issues.json") if args.json and args.json != "-" else None
    base = Config.from_yaml(args.config) if args.config else None
    settings = _given(args, [n for n in (*DATA_FLAGS, *TRAIN_FLAGS) if n != "out"])
    found = check_labels(args.source, base, folds=args.folds, rank_by=args.rank_by, filter_by=args.filter_by, **settings)
    folder = found.folder or Path(".")
    found.write_json(folder / SUMMARY_NAME)  # where `data inspect` finds the counts
    if args.json == "-":
        print(json.dumps(found.to_json(), indent=2))
        return 0
    written = found.write_csv(out or folder / "label_issues.csv")
    gallery = write_gallery(found, page or folder / "label_issues.html", top=args.gallery)
    print(found.table(args.top))
    print(f"every suspect: {written}")
    print(f"gallery (each suspect beside its nearest images of both classes): {gallery}")
    if as_json:
        print(f"as JSON: {found.write_json(as_json)}")
    print(f"to act on them: edit {written.name} (a 'label' column overrides 'suggested'), then train with --relabel or --drop")
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from imgclf.data.builtin import BUILTINS, locate

    if args.name not in BUILTINS or args.name == "digits":
        raise ImgclfError(f"{args.name}: not a downloadable dataset; choose one of {', '.join(n for n in BUILTINS if n != 'digits')}.")
    print(f"{args.name}: {locate(args.name, _data_config(args))}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from imgclf.engine.bundle import bundle_dir
    from imgclf.engine.rundir import slug
    from imgclf.evaluation import evaluate

    chosen = _output_path(args.json, "--json", "evaluation.json") if args.json else None
    ev = evaluate(args.model, args.source, split=args.split, batch_size=args.batch_size, tta=args.tta, device=args.device)
    print(ev.table())
    name = slug(Path(args.source).name) if args.source else "own"
    out = chosen or bundle_dir(args.model) / "evaluations" / f"{name}-{ev.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"written: {ev.save_json(out)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from imgclf.api import report

    print(f"report: {report(args.run_dir, args.source, split=args.split, batch_size=args.batch_size, device=args.device)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from imgclf.data.skips import SkipLog, warnings_summary
    from imgclf.predict import load
    from imgclf.submission import prediction_rows, resolve_inputs, template_beside, write_predictions

    clf = load(args.model, device=args.device, batch_size=args.batch_size, workers=args.workers, tta=args.tta)
    skips = SkipLog()
    ids, paths = resolve_inputs(args.inputs, skips)
    if len(ids) == 1 and not args.out and not args.template and not (template_beside(args.inputs) and not (args.top_k or args.proba)):
        # one image and nowhere asked to write: its top 5 on the terminal
        return _print_top5(clf, prediction_rows(clf, ids, paths, top_k=5, proba=args.proba)[1][0])
    out = _output_path(args.out or "predictions.csv", "--out", "predictions.csv")
    w = write_predictions(clf, args.inputs, out, template=args.template, top_k=args.top_k, proba=args.proba, resolved=(ids, paths, skips))
    if w.template:
        print(f"template: {w.template} (found beside {args.inputs[0]}; --template chooses another)")
    print(f"{w.labelled} predictions written to {w.path}")
    if w.errors:
        print(f"{w.bad} input(s) could not be read and have no label; each with its reason in {w.errors}")
    if w.skipped:
        print(f"{w.skipped_summary}; each with its reason in {w.skipped}")
    if w.warnings:
        assert w.warned is not None  # write_predictions sets warnings only when something warned
        print(warnings_summary(w.warned, w.warnings))
        for image_id, text in w.warned.items():
            log.debug("  %s: %s", image_id, text)
    return 0


def _print_top5(clf, row: dict) -> int:
    if row["error"]:
        raise ImgclfError(f"{row['id']}: {row['error']}.")
    print(f"{row['id']}:")
    for i in range(1, min(5, len(clf.classes_)) + 1):
        print(f"  {str(row[f'top{i}_label']):<24} {float(row[f'top{i}_prob']):7.2%}")
    if row["warning"]:
        print(f"  (the image library warned: {row['warning']})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from imgclf.export import PARITY_ATOL, export

    out = _output_path(args.out, "--out", "model.onnx" if args.format == "onnx" else "model.torchscript.pt") if args.out else None
    r = export(args.model, args.format, out, dynamic_batch=args.dynamic_batch, check=args.check)
    print(f"exported: {r.path} (input, classes and preprocessing in {r.path}.json)")
    print(
        f"parity with PyTorch on {r.images} real images: max abs logit difference {r.max_abs_diff:.2e} "
        f"(limit {PARITY_ATOL:.0e}), top-1 agreement {r.top1_agree:.2%}"
    )
    if not r.ok:
        raise ImgclfError(f"{r.path}: the export does not match PyTorch closely enough; keep using the bundle, and report this model.")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from imgclf.serve.server import serve
    except ImportError as err:
        raise ImgclfError(f"imgclf serve needs its extra ({err.name} is missing): pip install 'imgclf[serve]'.") from None
    from imgclf.engine.bundle import read_spec

    read_spec(args.model)  # a wrong path or a damaged bundle: one line now, not from a worker later
    settings = ServeSettings(model=args.model, **{name: getattr(args, name) for name in SERVE_FLAGS})
    serve(settings, ready_line=lambda line: print(line, flush=True))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import fnmatch

    from imgclf.models import timm_models
    from imgclf.models.registry import builtin_models

    pattern = args.pattern or "*"
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    entries = [e for e in builtin_models().values() if fnmatch.fnmatch(e.name, pattern)]
    if entries:
        print("Built-in networks:")
        width = max(len(e.name) for e in entries)
        for e in entries:
            default = " [default]" if e.is_default else ""
            print(f"  {e.name:<{width}}  {e.description}; from: {e.origin}{default}")
    archs, with_weights = timm_models.list_matching(pattern)
    weighted = len([a for a in archs if a in with_weights])
    print(f"timm architectures matching '{pattern}': {len(archs)} ({weighted} with pretrained weights, marked *)")
    if args.pattern:
        shown = archs if args.all else archs[: args.limit]
        for name in shown:
            print(f"  {'*' if name in with_weights else ' '} {name}")
        if len(shown) < len(archs):
            print(f"  ... {len(archs) - len(shown)} more (--all lists them)")
    else:
        print("  pass a pattern to list them, e.g. 'imgclf models resnet*'")
    return 0


def _parse_input(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        c, h, w = (int(p) for p in parts)
    except ValueError:
        raise ImgclfError(f"--input {text!r} is not C x H x W; write it like 3x224x224.") from None
    return c, h, w


def _cmd_summary(args: argparse.Namespace) -> int:
    from imgclf.models.registry import create_model
    from imgclf.models.summary import summarize

    c, h, w = _parse_input(args.input)
    model = create_model(args.model, c, args.classes, (h, w))
    print(f"{args.model} for {c}x{h}x{w} input, {args.classes} classes")
    print(summarize(model, (c, h, w)).table())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a 'did you mean' for a mistyped flag, whichever command it belongs to."""

    def error(self, message: str):
        import difflib

        if message.startswith("unrecognized arguments:"):
            known = sorted({o for p in _all_parsers(self) for a in p._actions for o in a.option_strings if o.startswith("--")})
            hints = [
                close[0]
                for word in message.split(":", 1)[1].split()
                if word.startswith("--")
                for close in [difflib.get_close_matches(word.split("=")[0], known, n=1)]
                if close
            ]
            if hints:
                message += f"; did you mean {' '.join(hints)}?"
        super().error(message)


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgclf", description="Image classifiers from folders of images.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_data_commands, _train_command, _scoring_commands, _deploy_commands, _model_commands):
        add(sub)
    return parser


def _data_commands(sub) -> None:
    data = sub.add_parser("data", help="look at and fetch datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="show what a source holds: layout, classes, sizes, skipped files")
    inspect.add_argument("source", help="a folder, a CSV file, or a built-in dataset (fashion-mnist, mnist, cifar10, cifar100, digits)")
    inspect.add_argument("--grid", metavar="FILE.png", help="also write a picture of a few images per class")
    _add_flags(inspect, DATA_FLAGS)
    inspect.set_defaults(run=_cmd_data_inspect)
    audit = data_sub.add_parser(
        "audit",
        help="check a source before trusting a score: duplicates and leaks between splits, "
        "label conflicts, class balance, tiny and oddly shaped images",
    )
    audit.add_argument("source", help="a folder, a CSV file, or a built-in dataset")
    audit.add_argument("--out", metavar="FILE.csv", help="where the findings go (default: audit.csv beside skipped.csv in the cache)")
    audit.add_argument("--json", metavar="FILE", help="also write the findings as JSON; '-' prints only the JSON")
    audit.add_argument("--exact-only", action="store_true", help="skip the near-duplicate search (a few seconds per 70,000 images)")
    _add_flags(audit, DATA_FLAGS)
    audit.set_defaults(run=_cmd_data_audit)
    labels = data_sub.add_parser(
        "labels",
        help="find images filed under the wrong class: each image scored by a model trained without it (K folds), "
        "confident learning on the scores; a table, label_issues.csv and a gallery to review",
    )
    labels.add_argument("source", help="a folder, a CSV file, or a built-in dataset")
    labels.add_argument("--config", metavar="FILE", help="a config.yaml (e.g. from an earlier run); flags override it")
    labels.add_argument(
        "--folds", type=int, default=FOLDS, help=f"models trained, each scoring the images it did not see (default: {FOLDS})"
    )
    labels.add_argument("--rank-by", choices=RANKINGS, default=RANKINGS[0], help=f"how suspects are ordered (default: {RANKINGS[0]})")
    labels.add_argument(
        "--filter-by",
        choices=FILTERS,
        default=FILTERS[0],
        help="which images are suspects: doubt (the given label gets less than on the likelier class's own pictures; "
        "precise) or noise_rate (confident learning's pruning, as cleanlab: more of two classes filed as each other, "
        "and more look-alikes) (default: doubt)",
    )
    labels.add_argument("--top", type=int, default=20, help="suspects shown on the terminal (default: 20)")
    labels.add_argument("--gallery", type=int, default=100, metavar="N", help="suspects on the HTML page (default: 100)")
    labels.add_argument("--csv", metavar="FILE.csv", help="where every suspect goes (default: label_issues.csv in the cache)")
    labels.add_argument("--html", metavar="FILE.html", help="where the gallery goes (default: label_issues.html beside the CSV)")
    labels.add_argument("--json", metavar="FILE", help="also write the findings as JSON; '-' prints only the JSON")
    _add_flags(labels, DATA_FLAGS)
    _add_flags(labels, TRAIN_FLAGS)
    labels.set_defaults(run=_cmd_data_labels)
    fetch = data_sub.add_parser("fetch", help="download a built-in dataset into the cache (or find it on this machine)")
    fetch.add_argument("name")
    _add_flags(fetch, DATA_FLAGS)
    fetch.set_defaults(run=_cmd_data_fetch)


def _train_command(sub) -> None:
    train = sub.add_parser("train", help="train a classifier on a source; writes a run directory")
    train.add_argument("source", nargs="?", help="a folder, a CSV file, or a built-in dataset (fashion-mnist, ...)")
    train.add_argument("--config", metavar="FILE", help="a config.yaml (e.g. from an earlier run); flags override it")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint (with --epochs, extend it)")
    train.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N processes on this machine (torchrun, DistributedDataParallel): one per GPU, or CPU processes sharing the cores",
    )
    _add_flags(train, DATA_FLAGS)
    _add_flags(train, AUGMENT_FLAGS)
    _add_flags(train, TRAIN_FLAGS)
    train.set_defaults(run=_cmd_train)
    lr = sub.add_parser(
        "lr-find",
        help="learning-rate range test (fastai's lr_find) on the run 'train' would make; "
        "plots loss against lr and suggests one; writes no run directory",
    )
    lr.add_argument("--plot", metavar="FILE.png", help="where the plot goes (default: lr_find.png)")
    lr.add_argument("--start", type=float, help="the smallest lr tried (default: 1e-6)")
    lr.add_argument("--end", type=float, help="the largest lr tried (default: 1)")
    lr.add_argument("--steps", type=int, help="steps, each at a larger lr; fewer when the loss diverges first (default: 100)")
    lr.set_defaults(run=_cmd_lr_find)
    batch = sub.add_parser(
        "batch-find", help="the largest batch of the run 'train' would make that fits in GPU memory, and a size to train with (CUDA only)"
    )
    batch.set_defaults(run=_cmd_batch_find)
    for trial in (lr, batch):
        trial.add_argument("source", help="a folder, a CSV file, or a built-in dataset (fashion-mnist, ...)")
        trial.add_argument("--config", metavar="FILE", help="a config.yaml (e.g. from an earlier run); flags override it")
        _add_flags(trial, DATA_FLAGS)
        _add_flags(trial, AUGMENT_FLAGS)
        _add_flags(trial, TRAIN_FLAGS)


def _bundle_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch (default: by the input's size, 1024 gray 28 px images down to 32 RGB ones at 224 px)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")


def _scoring_commands(sub) -> None:
    ev = sub.add_parser("evaluate", help="score a trained model on labeled data: table of metrics and JSON")
    ev.add_argument("model", help="a run directory or a bundle folder")
    ev.add_argument(
        "source",
        nargs="?",
        help="a folder, a CSV file or a built-in dataset (default: the run's own data, whose held-out images are scored)",
    )
    ev.add_argument(
        "--split",
        choices=("train", "val", "test"),
        help="split to score (default: test, else validation; on the run's own data never the training images)",
    )
    ev.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each image with its mirror and 1-pixel shifts (default: as the run's final score did)",
    )
    ev.add_argument("--json", metavar="FILE", help="where the metrics go (default: <model>/evaluations/<source>-<split>.json)")
    _bundle_args(ev)
    ev.set_defaults(run=_cmd_evaluate)
    rep = sub.add_parser("report", help="(re)write a run's report.html and plots")
    rep.add_argument("run_dir", metavar="RUN", help="a run directory")
    rep.add_argument("--source", help="data to score (default: the run's own training source)")
    rep.add_argument("--split", choices=("train", "val", "test"), help="split to score (default: test, else val)")
    _bundle_args(rep)
    rep.set_defaults(run=_cmd_report)


def _deploy_commands(sub) -> None:
    pr = sub.add_parser("predict", help="labels for images, folders or a CSV of ids; writes a submission CSV")
    pr.add_argument("model", help="a run directory or a bundle folder")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), or a CSV of ids (e.g. test.csv)")
    pr.add_argument("--out", help="the CSV to write (default: predictions.csv; one image alone prints its top 5)")
    pr.add_argument("--template", help="a sample submission whose columns and row order the output copies")
    pr.add_argument("--top-k", type=int, default=0, help="also write the K best classes with probabilities")
    pr.add_argument("--proba", action="store_true", help="also write one probability column per class")
    pr.add_argument("--workers", type=int, help="processes that decode the files (and on a CPU run the model); default: all cores")
    pr.add_argument("--tta", action="store_true", help="average each image with its mirror and 1-pixel shifts (when training used flips)")
    _bundle_args(pr)
    pr.set_defaults(run=_cmd_predict)
    ex = sub.add_parser("export", help="export a bundle to ONNX or TorchScript, checked against PyTorch on real images")
    ex.add_argument("model", help="a run directory or a bundle folder")
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    ex.add_argument("--out", help="the file to write (default: model.onnx or model.torchscript.pt beside the bundle)")
    ex.add_argument("--dynamic-batch", action="store_true", help="accept any batch size (default: batches of 1)")
    ex.add_argument("--check", metavar="SOURCE", help="images for the parity check (default: the run's own data)")
    ex.set_defaults(run=_cmd_export)
    sv = sub.add_parser("serve", help="an HTTP service for a bundle: /predict, the v2 inference protocol, a web page, metrics")
    sv.add_argument("model", help="a run directory or a bundle folder")
    for name, (kind, text) in SERVE_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            sv.add_argument(flag, action="store_true", help=text)
        else:
            default = SERVE_DEFAULTS[name]
            sv.add_argument(flag, type=kind, default=default, help=text + (f" (default: {default})" if default is not None else ""))
    sv.set_defaults(run=_cmd_serve)


def _model_commands(sub) -> None:
    models = sub.add_parser("models", help="list built-in networks and timm architectures")
    models.add_argument("pattern", nargs="?", help="wildcard pattern or part of a name, e.g. 'resnet*' or 'efficientnet'")
    models.add_argument("--limit", type=int, default=40, help="timm names to list (default: 40)")
    models.add_argument("--all", action="store_true", help="list every matching timm name")
    models.set_defaults(run=_cmd_models)
    summary = sub.add_parser("summary", help="per-layer table of a network: output shapes, parameters, FLOPs")
    summary.add_argument("model", help="a built-in or timm model name")
    summary.add_argument("--input", required=True, metavar="CxHxW", help="input shape, e.g. 1x28x28")
    summary.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
    summary.set_defaults(run=_cmd_summary)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from imgclf.logs import ensure_console

    ensure_console(args.verbose)  # imgclf's own messages only: libraries keep their quieter defaults
    try:
        code = args.run(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not as noise at exit
        return code
    except ImgclfError as err:
        print(f"imgclf: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # a file system refusal (permissions, a full disk): one line, not a traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"imgclf: error: {where}{err.strerror or err}; check the path, its permissions and the free space.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
