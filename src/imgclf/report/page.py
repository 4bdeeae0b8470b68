"""report.html: one self-contained page (images embedded), readable offline."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import numpy as np

from imgclf.engine.bundle import read_spec
from imgclf.report import plots

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.figures{display:flex;gap:1rem;flex-wrap:wrap}.figure{background:#f4f6f8;border-radius:6px;padding:.6rem 1rem}
.figure b{display:block;font-size:1.5rem}table{border-collapse:collapse;font-size:.9rem}
td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}th:first-child,td:first-child{text-align:left}
tr.weak td{color:#b00020}img{max-width:100%}pre{background:#f4f6f8;padding:.8rem;overflow:auto;font-size:.8rem}
.muted{color:#777}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _class_table(m: dict) -> str:
    weakest = min(r["f1"] for r in m["per_class"])
    rows = "".join(
        f'<tr class="{"weak" if r["f1"] == weakest else ""}"><td>{html.escape(r["class"])}</td><td>{r["precision"]:.4f}</td>'
        f"<td>{r['recall']:.4f}</td><td>{r['f1']:.4f}</td><td>{r['support']}</td></tr>"
        for r in m["per_class"]
    )
    avg = "".join(
        f"<tr><td><i>{name}</i></td><td>{a['precision']:.4f}</td><td>{a['recall']:.4f}</td><td>{a['f1']:.4f}</td>"
        f"<td>{a['support']}</td></tr>"
        for name, a in (("macro avg", m["macro_avg"]), ("weighted avg", m["weighted_avg"]))
    )
    return (
        '<table id="class-table"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>'
        f"</tr></thead><tbody>{rows}{avg}</tbody></table>"
    )


def write_plots(run_dir: Path, evaluation) -> dict[str, Path]:
    """Every plot of the run into run_dir/report/; returns name -> path."""
    out = run_dir / "report"
    m, classes = evaluation.metrics, evaluation.classes
    made = {}
    if (run_dir / "metrics.csv").exists():
        made["curves"] = plots.training_curves(plots.read_metrics(run_dir / "metrics.csv"), out / "curves.png")
    made["confusion"] = plots.confusion(np.array(m["confusion_matrix"]), classes, out / "confusion.png")
    made["f1"] = plots.f1_bars(m["per_class"], out / "f1.png")
    pred = evaluation.probs.argmax(1)
    labels = evaluation.labels
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(labels), size=min(32, len(labels)), replace=False))
    wrong = np.flatnonzero(pred != labels)[:32]
    worst = np.array([t["index"] for t in m["top_losses"]], dtype=np.int64)
    for name, rows, title in (
        ("samples", sample, "random predictions (wrong ones in red)"),
        ("misclassified", wrong, "misclassified images"),
        ("top_losses", worst, "highest-loss images: the model's surest mistakes first"),
    ):
        if len(rows):
            made[name] = plots.image_grid(
                evaluation.images.take(rows),
                [classes[labels[i]] for i in rows],
                [classes[pred[i]] for i in rows],
                [float(evaluation.probs[i, pred[i]]) for i in rows],
                out / f"{name}.png",
                title,
            )
    return made


def _audit_section(audit) -> str:
    if audit is None:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in audit.summary_lines())
    return (
        f'<h2>Data audit</h2><ul id="audit">{items}</ul><p class="muted">Each finding (paths, labels, distance) in '
        f"audit.csv beside this page.</p>"
    )


def _labels_section(run_dir: Path) -> str:
    """What the run did about wrong labels, from run.json: the label check's counts and noise per class
    (--drop-label-issues), and the user's own fixes (--relabel, --drop)."""
    import json

    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return ""
    found, fixes = info.get("label_issues"), info.get("label_fixes")
    if not found and not fixes:
        return ""
    items = []
    if found:
        items.append(
            f"label check ({html.escape(found['method'])}, {found['seconds']:.0f} s): {found['dropped']:,} of "
            f"{found['checked']:,} training images looked mislabeled and were left out; each in label_issues.csv"
        )
        worst = sorted(found.get("noise_per_class", []), key=lambda c: -c["noise_rate"])[:5]
        if worst:
            items.append(
                "estimated share filed under the wrong class: "
                + ", ".join(f"{html.escape(c['class'])} {c['noise_rate']:.1%}" for c in worst)
            )
        pairs = found.get("most_confused", [])[:5]
        if pairs:
            items.append(
                "most confused (given &rarr; likely): "
                + ", ".join(f"{html.escape(p['given'])} &rarr; {html.escape(p['likely'])} {p['share_of_given']:.1%}" for p in pairs)
            )
    if fixes and "relabel" in fixes:
        items.append(f"{fixes['relabeled']:,} label(s) changed by {html.escape(fixes['relabel'])}")
    if fixes and "drop" in fixes:
        items.append(f"{fixes['dropped']:,} image(s) left out by {html.escape(fixes['drop'])}")
    return '<h2>Labels</h2><ul id="labels">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def write_report(run_dir: Path, evaluation, summary: str = "", audit=None) -> Path:
    """Plots, evaluation.json and report.html in the run directory; returns the page's path.

    audit: the data audit (imgclf.data.audit.Audit) whose counts get a section of their own."""
    run_dir = Path(run_dir)
    made = write_plots(run_dir, evaluation)
    evaluation.save_json(run_dir / "evaluation.json")
    m = evaluation.metrics
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else "(not recorded)"
    arch = read_spec(run_dir).architecture.name if (run_dir / "model.json").exists() else "?"
    views = " with test-time views (mirror and 1-pixel shifts)" if m.get("tta") else ""
    figures = [("accuracy", f"{100 * m['accuracy']:.2f}%"), ("loss", f"{m['loss']:.4f}"), ("images", f"{m['images']:,}")]
    if "top5_accuracy" in m:
        figures.insert(1, ("top-5 accuracy", f"{100 * m['top5_accuracy']:.2f}%"))
    figure_html = "".join(f'<div class="figure">{k}<b>{v}</b></div>' for k, v in figures)
    confused = "".join(f"<li>{html.escape(p['true'])} &rarr; {html.escape(p['predicted'])}: {p['count']}</li>" for p in m["most_confused"])
    section = lambda key, title: f"<h2>{title}</h2>{_img(made[key], title)}" if key in made else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgclf report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(run_dir.name)}</h1>
<p class="muted">imgclf report, written {time.strftime("%Y-%m-%d %H:%M")}; model {html.escape(arch)},
{len(evaluation.classes)} classes; scored on the {html.escape(evaluation.split)} split{views}.</p>
<h2>Figures</h2><div class="figures">{figure_html}</div>
{section("curves", "Training curves")}
<h2>Classification report</h2>{_class_table(m)}
{section("f1", "F1 per class")}
{section("confusion", "Confusion matrix")}
<h2>Most confused classes</h2><ul>{confused or "<li>none</li>"}</ul>
{section("misclassified", "Misclassified examples")}
{section("top_losses", "Top losses")}
{section("samples", "Sample predictions")}
<h2>Dataset</h2><pre>{html.escape(summary or "(not recorded)")}</pre>
{_audit_section(audit)}
{_labels_section(run_dir)}
<h2>Configuration</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
