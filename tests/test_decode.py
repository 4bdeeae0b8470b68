"""Images as they come: every format and mode, EXIF orientation, alpha, sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_bomb_png
from imgclf import load_data
from imgclf.data.decode import BadImage, decode, probe

LOSSLESS = [("png", {}), ("bmp", {}), ("tiff", {}), ("webp", {"lossless": True})]


@pytest.mark.parametrize("ext, options", LOSSLESS)
def test_lossless_formats_decode_exactly(tmp_path, fmnist_small, ext, options):
    image = fmnist_small[0][3]
    path = tmp_path / f"x.{ext}"
    Image.fromarray(image, "L").save(path, **options)
    assert np.array_equal(decode(str(path), 1, None)[0], image)


@pytest.mark.parametrize("ext", ["jpg", "gif"])
def test_lossy_and_palette_formats_decode_closely(tmp_path, fmnist_small, ext):
    image = fmnist_small[0][5]
    path = tmp_path / f"x.{ext}"
    Image.fromarray(image, "L").save(path, quality=95) if ext == "jpg" else Image.fromarray(image, "L").save(path)
    got = decode(str(path), 1, None)[0].astype(int)
    assert np.abs(got - image).mean() < 3


def test_modes(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    cases = {
        "one.png": (Image.fromarray(np.eye(10, 12, dtype=bool)).convert("1"), 1, lambda a: set(np.unique(a)) == {0, 255}),
        "i16.png": (Image.fromarray((np.full((10, 12), 100, np.uint16) * 257)), 1, lambda a: (a == 100).all()),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), 3, lambda a: abs(int(a[0].mean()) - 200) < 8 and a[2].mean() < 10),
        "palette.png": (Image.fromarray(rgb).convert("P"), 3, lambda a: abs(int(a[0].mean()) - 200) < 3),
    }
    for name, (img, channels, check) in cases.items():
        img.save(tmp_path / name)
        h, w, color, mode = probe(str(tmp_path / name))
        assert (h, w) == (10, 12)
        assert color == (channels == 3), name
        assert check(decode(str(tmp_path / name), channels, None)), name


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (10, 20, 30, 255)  # top half opaque dark, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = decode(str(tmp_path / "a.png"), 3, None)
    assert (got[:, 4:] == 255).all() and tuple(got[:, 0, 0]) == (10, 20, 30)
    la = np.zeros((8, 8, 2), np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert probe(str(tmp_path / "la.png"))[2] is False
    assert (decode(str(tmp_path / "la.png"), 1, None) == 255).all()


def test_gray_palette_stays_gray(tmp_path, fmnist_small):
    Image.fromarray(fmnist_small[0][0], "L").convert("P").save(tmp_path / "p.png")
    assert probe(str(tmp_path / "p.png"))[2] is False


# How a camera stores an upright picture for each EXIF orientation: the tag says how to undo this.
_STORED_AS = {1: [], 2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
              5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90], 7: [Image.Transpose.TRANSVERSE],
              8: [Image.Transpose.ROTATE_270]}
_FORMATS = {  # file name: (mode written, save options)
    "jpeg.jpg": ("L", {"quality": 95}), "png.png": ("L", {}), "webp.webp": ("RGB", {"lossless": True}),
    "tiff-raw.tif": ("L", {}), "tiff-lzw.tif": ("L", {"compression": "tiff_lzw"}),
    "tiff-g4.tif": ("1", {"compression": "group4"}), "tiff-strips.tif": ("L", {"rows_per_strip": 4}),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("name", _FORMATS)
def test_every_exif_orientation_decodes_upright(tmp_path, name, orientation):
    """All 8 orientations in JPEG, PNG, WebP and TIFF (uncompressed, LZW, Group 4 fax, several strips)
    give the upright picture, and the header probe gives its upright size."""
    upright = np.zeros((24, 40), np.uint8)  # wide, with marks that tell every flip and turn apart
    upright[:6, :10] = 255
    upright[10:14, 20:] = 255
    mode, options = _FORMATS[name]
    img = Image.fromarray(upright).convert(mode)
    for step in _STORED_AS[orientation]:
        img = img.transpose(step)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / name)
    if "rows_per_strip" in options:  # Pillow's own TIFF writer makes several strips when told the rows per strip
        img.save(path, tiffinfo={0x0112: orientation, 278: options["rows_per_strip"]})
        assert len(Image.open(path).tile) > 1
    else:
        img.save(path, exif=exif.tobytes(), **options)
    assert probe(path)[:2] == (24, 40)
    got = decode(path, 1, None)[0].astype(int)
    assert got.shape == (24, 40) and np.abs(got - upright).mean() < 4


@pytest.mark.parametrize("where", ["xmp", "raw profile"])
def test_png_orientation_from_xmp_or_a_text_chunk_is_applied(tmp_path, where):
    """Pillow also reads the orientation of a PNG from XMP and from ImageMagick's 'Raw profile type
    exif' text chunk; the shortcut that skips getexif() must not miss them."""
    from PIL import PngImagePlugin

    stored = np.zeros((20, 40), np.uint8)  # wide as stored, bright left columns
    stored[:, :8] = 255
    info = PngImagePlugin.PngInfo()
    if where == "xmp":
        info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                      '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    else:
        exif = Image.Exif()
        exif[0x0112] = 6
        raw = exif.tobytes()
        info.add_text("Raw profile type exif", f"\nexif\n{len(raw)}\n" + raw.hex())
    Image.fromarray(stored, "L").save(tmp_path / "o.png", pnginfo=info)
    got = decode(str(tmp_path / "o.png"), 1, None)[0]
    assert got.shape == (40, 20) and got[:8].mean() > 200 and got[8:].mean() < 40  # rotated: left became top


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    make_bomb_png(tmp_path / "bomb.png")
    with pytest.raises(BadImage, match="decompression bomb"):
        probe(str(tmp_path / "bomb.png"))


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_resize_keeps_aspect_ratio(tmp_path, resize):
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 10:30] = 255  # a centred white square 20x20 inside a 20x40 image
    Image.fromarray(wide, "L").save(tmp_path / "w.png")
    got = decode(str(tmp_path / "w.png"), 1, (16, 16), resize)[0]
    assert got.shape == (16, 16)
    if resize == "crop":  # the centre crop is the white square, scaled: all bright
        assert got[:, 2:14].mean() > 240
    else:  # padded: the 16x8 band in the middle holds the image, black above and below
        assert got[:4].max() == 0 and got[12:].max() == 0 and got[6:10, 6:10].mean() > 200


def test_crop_fraction_keeps_the_centre_and_interpolation_resamples(tmp_path):
    framed = np.zeros((64, 96), np.uint8)
    framed[8:56, 24:72] = 255  # a white 48 px square in a black frame: 3/4 of the height
    Image.fromarray(framed, "L").save(tmp_path / "f.png")
    whole = decode(str(tmp_path / "f.png"), 1, (32, 32))[0]
    centre = decode(str(tmp_path / "f.png"), 1, (32, 32), crop_fraction=0.75)[0]
    assert whole[0].max() == 0 and whole[:, 0].max() == 0  # the frame is kept at the full square
    assert centre[1:-1, 1:-1].min() == 255  # resized to cover 32 / 0.75 px: the crop is the white square alone
    bicubic = decode(str(tmp_path / "f.png"), 1, (32, 32), interpolation="bicubic")[0]
    assert bicubic.shape == whole.shape and not np.array_equal(bicubic, whole)  # another filter at the square's edges


def test_mixed_gray_and_color_dataset_becomes_rgb(tmp_path, fmnist_small):
    images, labels = fmnist_small
    for i in range(20):
        folder = tmp_path / f"c{labels[i]}"
        folder.mkdir(exist_ok=True)
        img = Image.fromarray(images[i], "L")
        (img.convert("RGB") if i == 7 else img).save(folder / f"{i}.png")
    data = load_data(tmp_path, val_fraction=0)
    assert data.channels == 3 and data.modes_seen == {"L": 19, "RGB": 1}
    first = data.train.array()
    assert (first[:, 0] == first[:, 1]).all()  # gray images replicated into the three channels


def test_varying_sizes_choose_a_size_and_say_so(tmp_path, fmnist_small):
    images, _ = fmnist_small
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, side in enumerate([30, 40, 50, 60, 70, 80]):
        Image.fromarray(images[i], "L").resize((side, side + 10)).save(tmp_path / "ab"[i % 2] / f"{i}.png")
    data = load_data(tmp_path, val_fraction=0)
    assert data.image_size == (56, 56)  # median short side 55, to a multiple of 8
    assert any("chosen" in n and "--image-size" in n for n in data.notes)
    assert load_data(tmp_path, image_size=24, val_fraction=0).image_size == (24, 24)


def test_bytes_decode_as_the_file_does_with_the_same_checks(tmp_path, fmnist_small):
    """Uploads go through the checks folders get: the same pixels, and the same reasons for bad input."""
    from imgclf.data.decode import read

    image = fmnist_small[0][7]
    for ext, options in LOSSLESS + [("jpg", {"quality": 90}), ("gif", {})]:
        path = tmp_path / f"x.{ext}"
        Image.fromarray(image, "L").save(path, **options)
        assert np.array_equal(decode(path.read_bytes(), 1, (20, 20)), decode(str(path), 1, (20, 20)))
    make_bomb_png(tmp_path / "bomb.png")
    tga = tmp_path / "x.tga"
    Image.fromarray(image, "L").save(tga)
    good = (tmp_path / "x.png").read_bytes()
    cases = {
        "empty": (b"", "empty", "empty"),
        "text": (b"just some text, no pixels", "corrupt", "not an image"),
        "bomb": ((tmp_path / "bomb.png").read_bytes(), "too_large", "decompression bomb"),
        "truncated": (good[:60], "corrupt", ""),
        "other format": (tga.read_bytes(), "format", "TGA"),
    }
    for what, (blob, kind, words) in cases.items():
        got = read(blob, 1, (28, 28))
        assert isinstance(got, BadImage) and got.kind == kind and words in str(got), (what, got)
    # The same refusal for a file in a format the folder walk would not list, whatever its extension says.
    renamed = tmp_path / "really-a-tga.png"
    renamed.write_bytes(tga.read_bytes())
    assert read(str(renamed), 1, (28, 28)).kind == "format"
    # A pixel bound below Pillow's own.
    big = Image.new("L", (2000, 1000))
    path = tmp_path / "big.png"
    big.save(path)
    refused = read(path.read_bytes(), 1, (28, 28), max_pixels=1_000_000)
    assert refused.kind == "too_large" and "2000x1000" in str(refused)
    assert read(path.read_bytes(), 1, (28, 28), max_pixels=2_000_000).shape == (1, 28, 28)


@pytest.mark.slow
def test_predict_takes_encoded_bytes_and_uint8_arrays(tiny_bundle, fmnist_small, tmp_path):
    import imgclf

    clf = imgclf.load(tiny_bundle, device="cpu")
    images = fmnist_small[0][:5]
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    from_files = clf.predict_proba(paths)
    blobs = [open(p, "rb").read() for p in paths]
    np.testing.assert_allclose(clf.predict_proba(blobs), from_files, atol=1e-6)
    np.testing.assert_allclose(clf.predict_pixels(images[:, None].copy()), from_files, atol=1e-6)
    items = clf.bytes_items([blobs[0], b"", b"nonsense"])
    assert items[0].error is None and "empty" in items[1].error and "not an image" in items[2].error
    with pytest.raises(Exception, match="uint8 N x 1 x 28 x 28"):
        clf.predict_pixels(np.zeros((2, 3, 28, 28), np.uint8))
    with clf.worker_pool(2) as pool:  # a pool the caller owns, reused over calls
        for _ in range(2):
            items, probs = clf.files_with_probabilities(paths, pool=pool)
            np.testing.assert_allclose(probs, from_files, atol=1e-6)
