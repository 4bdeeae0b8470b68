"""label_issues.html: each suspect beside its nearest training images of the given and the suggested class,
so that a person judges a label in seconds; self-contained (pictures embedded), in report.html's style."""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import numpy as np

from imgclf.report.page import STYLE

THUMB = 96  # px, the longer side of every picture on the page
EXTRA_STYLE = """
.suspect{display:flex;gap:1.2rem;align-items:flex-start;border-bottom:1px solid #eee;padding:.8rem 0}
.suspect .main img{border:3px solid #b00020}.tiles{display:flex;gap:.3rem;flex-wrap:wrap}
.tiles figure{margin:0;text-align:center;font-size:.7rem;color:#555}.label{font-weight:600}
.path{font-size:.75rem;color:#777;word-break:break-all;max-width:260px}
td.hot{background:#fde4e4}
"""


def thumbnail(image: np.ndarray) -> str:
    """A uint8 C x H x W image as an <img> with a PNG data URI, enlarged without smoothing when small."""
    from PIL import Image

    pixels = image[0] if image.shape[0] == 1 else image[:3].transpose(1, 2, 0)
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    scale = THUMB / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _tiles(review, rows: np.ndarray, caption: str) -> str:
    if not len(rows):
        return f'<div class="muted">no {html.escape(caption)} images in the same fold</div>'
    pictures = review.images.take(rows)
    return "".join(f"<figure>{thumbnail(pictures[k])}<figcaption>{html.escape(caption)}</figcaption></figure>" for k in range(len(rows)))


def _noise_table(review) -> str:
    """The estimated joint as shares of each given class: rows given, columns likely; off-diagonal cells
    of 1% or more are marked."""
    joint, classes = np.asarray(review.issues.joint), review.classes
    rows = joint / np.maximum(joint.sum(1, keepdims=True), 1e-12)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    body = "".join(
        f"<tr><td>{html.escape(classes[i])}</td>"
        + "".join(f'<td class="{"hot" if i != j and rows[i, j] >= 0.01 else ""}">{100 * rows[i, j]:.1f}</td>' for j in range(len(classes)))
        + f"<td>{100 * review.issues.noise_rates[i]:.1f}</td></tr>"
        for i in range(len(classes))
    )
    return (
        f'<table id="noise"><thead><tr><th>given \\ likely (%)</th>{head}<th>noise</th></tr></thead><tbody>{body}</tbody></table>'
        '<p class="muted">Each row: of the images filed under that class, the estimated share that belongs to each class '
        "(confident learning's joint, calibrated to the class counts); noise: the share that belongs elsewhere.</p>"
    )


def write_gallery(review, path: str | Path, top: int = 100) -> Path:
    """The page of the first `top` suspects, with their nearest neighbours of both classes."""
    review.find_neighbours(top)
    rows = review.rows()[:top]
    cards = []
    pictures = review.images.take(review.issues.suspects[:top]) if rows else []
    for rank, row in enumerate(rows):
        given_rows, suggested_rows = review.neighbours.get(rank, (np.array([], int), np.array([], int)))
        given, suggested = html.escape(row["given"]), html.escape(row["suggested"])
        cards.append(
            f'<div class="suspect" id="s{row["rank"]}"><div class="main">{thumbnail(pictures[rank])}'
            f'<div>#{row["rank"]}</div><div>filed as <span class="label">{given}</span> ({row["given_confidence"]:.2f})</div>'
            f'<div>looks like <span class="label">{suggested}</span> ({row["confidence"]:.2f})</div>'
            f'<div class="path">{html.escape(row["path"])}</div></div>'
            f'<div><div>nearest filed as {given}</div><div class="tiles">{_tiles(review, given_rows, row["given"])}</div>'
            f"<div>nearest filed as {suggested}</div>"
            f'<div class="tiles">{_tiles(review, suggested_rows, row["suggested"])}</div></div></div>'
        )
    shown = f"the first {len(rows)} of {len(review.issues.suspects):,}" if len(review.issues.suspects) > len(rows) else "all"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgclf label check: {html.escape(review.source)}</title>
<style>{STYLE}{EXTRA_STYLE}</style></head><body>
<h1>Label check: {html.escape(Path(review.source).name or review.source)}</h1>
<p class="muted">imgclf, written {time.strftime("%Y-%m-%d %H:%M")}: {html.escape(review.summary_line())}; ranked by
{html.escape(review.rank_by.replace("_", " "))}, filtered by {html.escape(review.filter_by.replace("_", " "))}. Every suspect is in
label_issues.csv; edit its rows and train with --relabel or --drop to act on them.</p>
<h2>Estimated label noise</h2>{_noise_table(review)}
<h2>Suspects ({shown})</h2>
{"".join(cards) or "<p>none: every label agrees with the out-of-sample predictions.</p>"}
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
