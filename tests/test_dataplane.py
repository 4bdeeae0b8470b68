"""The service's data plane driven without HTTP: what both routers rely on (answers equal the library's,
every refusal with its status and reason, deadlines, a bounded queue, readiness) is tested here directly,
and over HTTP in test_serve.py."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest

import imgclf
from imgclf.serve.dataplane import DataPlane, ServeError
from imgclf.serve.model import ServedModel
from imgclf.serve.settings import ServeSettings
from serving import png_bytes


@pytest.fixture(scope="module")
def served(tiny_bundle):
    return ServedModel(ServeSettings(model=str(tiny_bundle), device="cpu", max_batch=8, workers=1))


def _plane(served, tiny_bundle, **limits) -> DataPlane:
    settings = {"model": str(tiny_bundle), "device": "cpu", "max_batch": 8, "workers": 1, **limits}
    return DataPlane(ServeSettings(**settings).check(), served)


def _encoded(fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def _classify(plane: DataPlane, blobs, started: float | None = None):
    async def go():
        with plane.arrival() as arrival:
            return await plane.classify_encoded(blobs, time.monotonic() if started is None else started, arrival)

    return asyncio.run(go())


def test_the_plane_answers_as_the_library_does(served, tiny_bundle, fmnist_small):
    images = fmnist_small[0][:12]
    plane = _plane(served, tiny_bundle)
    try:
        probs = _classify(plane, [(f"{i}.png", png_bytes(im)) for i, im in enumerate(images)])
        assert np.allclose(probs, imgclf.load(tiny_bundle, device="cpu").predict_proba(images), atol=1e-5)
        pixels = np.stack([served.pre.read(png_bytes(im)) for im in images])

        async def by_pixels():
            with plane.arrival() as arrival:
                return await plane.classify_pixels(pixels, time.monotonic(), arrival)

        assert np.allclose(asyncio.run(by_pixels()), probs, atol=1e-6)
        assert plane.arriving == 0 and plane.info()["limits"]["max_images"] == plane.settings.max_images
        assert b"imgclf_images_total 24.0" in plane.render_metrics()
        assert plane.model_for(served.name, "1") is served
    finally:
        plane.close()


@pytest.mark.parametrize(
    "blobs, status, reason",
    [
        ([], 400, "no_image"),
        ([("a.txt", b"not an image at all")], 400, "image_corrupt"),
        ([("a.ico", "ICO")], 415, "image_format"),  # a real image in a format that is not accepted
        ([("empty.png", b"")], 400, "image_empty"),
        ([(f"{i}.png", None) for i in range(9)], 413, "too_many_images"),  # 9 > --max-images 8: refused before decoding
    ],
)
def test_each_refusal_has_its_status_and_reason(served, tiny_bundle, blobs, status, reason):
    plane = _plane(served, tiny_bundle, max_images=8)
    blobs = [(name, _encoded(blob) if isinstance(blob, str) else blob) for name, blob in blobs]
    try:
        with pytest.raises(ServeError) as err:
            _classify(plane, blobs)
        assert (err.value.status, err.value.reason) == (status, reason)
        assert plane.arriving == 0  # a refused request is no longer counted as coming
    finally:
        plane.close()


def test_unknown_models_past_deadlines_and_a_draining_plane_are_refused(served, tiny_bundle, fmnist_small):
    plane = _plane(served, tiny_bundle, timeout_s=0.5)
    blob = [("a.png", png_bytes(fmnist_small[0][0]))]
    try:
        with pytest.raises(ServeError) as err:
            plane.model_for("another")
        assert (err.value.status, err.value.reason) == (404, "unknown_model")
        with pytest.raises(ServeError) as err:
            plane.model_for(served.name, "2")
        assert err.value.status == 404
        with pytest.raises(ServeError) as err:  # the request's time was spent before it reached the model
            _classify(plane, blob, started=time.monotonic() - 1.0)
        assert (err.value.status, err.value.reason) == (504, "deadline")
    finally:
        plane.close()
    assert not plane.ready and plane.state() == "draining"
    with pytest.raises(ServeError) as err:
        _classify(plane, blob)
    assert (err.value.status, err.value.reason, err.value.headers) == (503, "not_ready", {"Retry-After": "1"})


def test_a_plane_without_its_model_says_why(tiny_bundle, tmp_path):
    plane = DataPlane(ServeSettings(model=str(tiny_bundle), device="cpu", workers=1).check())
    assert plane.state() == "loading" and not plane.ready
    with pytest.raises(ServeError, match="not ready: loading"):
        plane.info()
    (tmp_path / "model.json").write_text("{}")
    broken = DataPlane(ServeSettings(model=str(tmp_path), device="cpu", workers=1).check())
    broken.load()
    assert broken.state().startswith("failed: ImgclfError") and not broken.ready


def test_a_full_queue_refuses_at_once(served, tiny_bundle, fmnist_small):
    plane = _plane(served, tiny_bundle, max_queue=1, max_batch=1)
    pixels = served.pre.read(png_bytes(fmnist_small[0][0]))[None].copy()

    async def many():
        async def one():  # each reaches the queue before its first await: 40 arrive within microseconds
            with plane.arrival() as arrival:
                return await plane.classify_pixels(pixels, time.monotonic(), arrival)

        return await asyncio.gather(*(one() for _ in range(40)), return_exceptions=True)

    try:
        answers = asyncio.run(many())
    finally:
        plane.close()
    refused = [a for a in answers if isinstance(a, ServeError)]
    assert refused and all((r.status, r.reason) == (503, "queue_full") for r in refused)
    assert any(isinstance(a, np.ndarray) for a in answers)
