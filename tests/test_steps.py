"""Per-image conversions checked against float64/integer numpy references written here.

Inputs are tiny images generated per test; every number is compared with a reference formula,
never with the library's own output.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infmix.config import ProcessConfig
from infmix.process import Result, SourceOptions, process_sample
from infmix.sample import Sample
from infmix.steps.decode import decode
from infmix.steps.normalise import stretch, to_gray

# ---------------------------------------------------------------- references and helpers


def stretch_ref(values: np.ndarray, pct: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """The documented 16-bit stretch, written out in float64."""
    v = values.astype(np.float64)
    lo, hi = np.percentile(v, pct)
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.clip(np.round((v - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def luma_int(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma in Pillow's fixed-point form."""
    c = rgb[..., :3].astype(np.int64)
    return ((c[..., 0] * 19595 + c[..., 1] * 38470 + c[..., 2] * 7471 + 0x8000) >> 16).astype(
        np.uint8
    )


def luma_float(rgb: np.ndarray) -> np.ndarray:
    c = rgb[..., :3].astype(np.float64)
    return np.round(0.299 * c[..., 0] + 0.587 * c[..., 1] + 0.114 * c[..., 2])


def counts14(rng: np.random.Generator, h: int = 24, w: int = 32) -> np.ndarray:
    """14-bit-like sensor counts: a gradient, a warm blob and noise, with a few hot pixels."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 7000 + 40 * x + 25 * y + 3000 * np.exp(-((x - w / 3) ** 2 + (y - h / 2) ** 2) / 30)
    img += rng.normal(0, 30, (h, w))
    img[0, 0], img[-1, -1] = 16383, 2000  # outliers the percentiles must ignore
    return np.clip(img, 0, 16383).astype(np.uint16)


def smooth_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like scene: colour gradients, a flat patch, mild noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([40 + 150 * x / w, 60 + 120 * y / h, 200 - 100 * (x + y) / (w + h)], -1)
    img[h // 4 : h // 2, w // 5 : w // 2] = (200, 50, 90)
    img += rng.normal(0, 4, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def run(path: Path, opts: SourceOptions | None = None, **process: object) -> Result:
    sample = Sample(f"t__{path.stem}", "t", "infrared", str(path), path.name)
    return process_sample(sample, opts or SourceOptions(), ProcessConfig(**process))


def stored(res: Result) -> np.ndarray:
    """Pixels of the stored bytes; they must be a single-channel 8-bit image."""
    assert res.ok, (res.reason, res.detail)
    im = Image.open(io.BytesIO(res.data))
    assert im.mode == "L"
    assert (res.meta["width"], res.meta["height"]) == im.size
    return np.asarray(im)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- 16-bit stretch


@pytest.mark.parametrize("pct", [(1.0, 99.0), (2.0, 98.0), (0.0, 100.0), (5.0, 97.5)])
def test_stretch_matches_float64_reference(rng, pct):
    v = counts14(rng)
    out, params = stretch(v, pct)
    assert out.dtype == np.uint8
    assert np.array_equal(out, stretch_ref(v, pct))
    lo, hi = np.percentile(v.astype(np.float64), pct)
    assert params["low"] == lo and params["high"] == hi


def test_stretch_uses_the_full_range_and_clips_outliers(rng):
    v = counts14(rng)
    out, _ = stretch(v, (1.0, 99.0))
    assert out.min() == 0 and out.max() == 255
    assert out[0, 0] == 255 and out[-1, -1] == 0


def test_stretch_constant_image_gives_zeros():
    out, params = stretch(np.full((5, 7), 9000, np.uint16), (1.0, 99.0))
    assert out.shape == (5, 7) and out.dtype == np.uint8
    assert not out.any()
    assert params["low"] == params["high"] == 9000.0


def test_to_gray_of_16bit_image_is_the_stretch(rng):
    v = counts14(rng)
    im = Image.fromarray(v)
    assert im.mode == "I;16"
    gray, params = to_gray(im, (2.0, 98.0))
    assert gray.mode == "L"
    assert np.array_equal(np.asarray(gray), stretch_ref(v, (2.0, 98.0)))
    assert params["method"] == "stretch"


@pytest.mark.parametrize("suffix", ["png", "tif"])
@pytest.mark.parametrize("pct", [(1.0, 99.0), (2.0, 98.0)])
def test_16bit_file_end_to_end(tmp_path, rng, suffix, pct):
    v = counts14(rng, 30, 44)
    path = tmp_path / f"frame.{suffix}"
    Image.fromarray(v).save(path)
    res = run(path, format="png", percentiles=pct)
    assert np.array_equal(stored(res), stretch_ref(v, pct))
    meta = res.meta
    assert meta["original"]["bit_depth"] == 16
    assert meta["original"]["format"] == ("PNG" if suffix == "png" else "TIFF")
    assert (meta["width"], meta["height"]) == (44, 30)
    conv = meta["conversion"]
    lo, hi = np.percentile(v.astype(np.float64), pct)
    assert conv["method"] == "stretch"
    assert conv["low"] == lo and conv["high"] == hi


# ---------------------------------------------------------------- colour -> luma


def test_rgb_png_is_bt601_luma(tmp_path, rng):
    rgb = rng.integers(0, 256, (31, 47, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    res = run(path, format="png")
    out = stored(res)
    assert np.array_equal(out, luma_int(rgb))
    assert np.abs(out.astype(np.float64) - luma_float(rgb)).max() <= 1
    assert res.meta["conversion"]["method"] == "bt601_luma"
    assert res.meta["original"]["mode"] == "RGB"


def saturated_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A scene with pure-colour patches and noise: RGB clipping makes luma differ most."""
    rgb = smooth_rgb(rng, h, w).astype(np.float64)
    rgb[h // 2 : h // 2 + 20, w // 2 : w // 2 + 30] = (255, 0, 0)
    rgb[10:30, 90:120] = (0, 0, 255)
    rgb[60:90, 10:40] = (255, 255, 0)
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    # Measured at quality 90 (several seeds): smooth mean 0, max 0; saturated mean ~0.04,
    # max 5-7 (libjpeg's Y plane vs Y recomputed from RGB that was clipped at the patches).
    ("scene", "mean_bound", "max_bound"),
    [(smooth_rgb, 0.05, 1), (saturated_rgb, 0.25, 10)],
)
def test_colour_jpeg_luma_plane_is_close_to_full_decode(
    tmp_path, rng, scene, mean_bound, max_bound
):
    path = tmp_path / "colour.jpg"
    Image.fromarray(scene(rng, 96, 128)).save(path, quality=90)
    res = run(path, format="png")
    out = stored(res).astype(np.float64)
    full = np.asarray(Image.open(path).convert("RGB"))
    assert out.shape == full.shape[:2]
    diff = np.abs(out - luma_float(full))
    assert diff.mean() < mean_bound
    assert diff.max() <= max_bound
    assert res.meta["conversion"]["method"] == "jpeg_luma_plane"


def _palette_image(rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    idx = rng.integers(0, 16, (18, 26), dtype=np.uint8)
    pal = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.flatten().tolist())
    return im, pal[idx]


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_is_luma_of_its_colours(tmp_path, rng, transparency):
    im, rgb = _palette_image(rng)
    path = tmp_path / "pal.png"
    im.save(path, **({"transparency": 3} if transparency else {}))
    assert Image.open(path).mode == "P"
    out = stored(run(path, format="png"))
    assert np.array_equal(out, luma_int(rgb))


def test_rgba_png_is_luma_of_rgb_ignoring_alpha(tmp_path, rng):
    rgba = rng.integers(0, 256, (18, 26, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = stored(run(path, format="png"))
    assert np.array_equal(out, luma_int(rgba[..., :3]))


def test_la_png_keeps_the_l_channel(tmp_path, rng):
    la = rng.integers(0, 256, (18, 26, 2), dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    res = run(path, format="png")
    assert np.array_equal(stored(res), la[..., 0])
    assert res.meta["original"]["mode"] == "LA"


def test_bilevel_png_is_0_or_255(tmp_path, rng):
    bits = rng.integers(0, 2, (18, 26)).astype(bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    res = run(path, format="png")
    assert res.meta["original"]["mode"] == "1"
    assert np.array_equal(stored(res), bits.astype(np.uint8) * 255)


def _cmyk_ref(cmyk: np.ndarray) -> np.ndarray:
    """Naive CMYK -> RGB (no colour profile), then BT.601 luma, in float64."""
    c = cmyk.astype(np.float64)
    rgb = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255
    return luma_float(rgb)


@pytest.mark.parametrize("fmt", ["tif", "jpg"])
def test_cmyk_gives_gray_of_right_size(tmp_path, rng, fmt):
    cmyk = rng.integers(0, 256, (18, 26, 4), dtype=np.uint8)
    path = tmp_path / f"cmyk.{fmt}"
    Image.fromarray(cmyk, "CMYK").save(path)
    res = run(path, format="png")
    out = stored(res)
    assert out.shape == (18, 26)
    assert res.meta["original"]["mode"] == "CMYK"
    if fmt == "tif":  # lossless: the naive conversion, up to fixed-point rounding
        assert np.abs(out - _cmyk_ref(cmyk)).max() <= 2


def test_i16_png_of_full_16bit_range(tmp_path, rng):
    v = rng.integers(0, 65536, (20, 28), dtype=np.uint16)
    path = tmp_path / "full16.png"
    Image.fromarray(v).save(path)
    res = run(path, format="png")
    assert np.array_equal(stored(res), stretch_ref(v))
    assert res.meta["original"]["bit_depth"] == 16


# ---------------------------------------------------------------- orientation, passthrough


def _halves(h: int, w: int, rgb: bool) -> np.ndarray:
    """Left half dark, right half bright."""
    img = np.full((h, w), 30, np.uint8)
    img[:, w // 2 :] = 220
    return np.stack([img] * 3, -1) if rgb else img


@pytest.mark.parametrize("rgb", [True, False])
def test_exif_orientation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(_halves(20, 40, rgb)).save(path, exif=exif, quality=95)
    res = run(path)
    out = stored(res)
    assert out.shape == (40, 20)  # (height, width) after rotation
    assert (res.meta["width"], res.meta["height"]) == (20, 40)
    assert (res.meta["original"]["width"], res.meta["original"]["height"]) == (40, 20)
    assert res.meta["conversion"].get("exif_oriented") is True
    # Rotating clockwise brings the dark left half to the top.
    assert out[:16].mean() < 60 and out[-16:].mean() > 190


def test_gray_jpeg_is_passed_through_byte_for_byte(tmp_path, rng):
    gray = luma_int(smooth_rgb(rng, 40, 56))
    path = tmp_path / "gray.jpg"
    Image.fromarray(gray).save(path, quality=80)
    data = path.read_bytes()
    res = run(path)
    assert res.data == data
    assert res.meta["conversion"]["method"] == "passthrough"
    assert res.ext == "jpg"


@pytest.mark.parametrize("process", [{"passthrough": False}, {"format": "png"}])
def test_gray_jpeg_is_reencoded_when_asked(tmp_path, rng, process):
    gray = luma_int(smooth_rgb(rng, 40, 56))
    path = tmp_path / "gray.jpg"
    Image.fromarray(gray).save(path, quality=80)
    res = run(path, **process)
    assert res.data != path.read_bytes()
    assert res.meta["conversion"]["method"] != "passthrough"
    decoded = np.asarray(Image.open(path)).astype(np.float64)
    assert np.abs(stored(res) - decoded).mean() < 1.0


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("name", "size"),
    [("land.png", (200, 120)), ("port.png", (90, 150)), ("land.jpg", (300, 170))],
)
def test_max_side_downscales_keeping_aspect(tmp_path, rng, name, size):
    w, h = size
    path = tmp_path / name
    Image.fromarray(smooth_rgb(rng, h, w)).save(path)
    res = run(path, format="png", max_side=64)
    oh, ow = stored(res).shape
    assert max(ow, oh) == 64
    scale = 64 / max(w, h)
    assert abs(ow - w * scale) <= 1 and abs(oh - h * scale) <= 1


@pytest.mark.parametrize("name", ["small.png", "small.jpg"])
def test_max_side_never_upscales(tmp_path, rng, name):
    path = tmp_path / name
    Image.fromarray(smooth_rgb(rng, 30, 50)).save(path)
    assert stored(run(path, format="png", max_side=64)).shape == (30, 50)


def test_crop_removes_the_border(tmp_path, rng):
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "framed.png"
    Image.fromarray(rgb).save(path)
    top, right, bottom, left = 2, 3, 4, 5
    res = run(path, SourceOptions(crop=(top, right, bottom, left)), format="png")
    assert np.array_equal(stored(res), luma_int(rgb)[top : 30 - bottom, left : 40 - right])
    assert res.meta["conversion"]["crop"] == [top, right, bottom, left]
    assert (res.meta["original"]["width"], res.meta["original"]["height"]) == (40, 30)


def test_crop_larger_than_image_is_rejected(tmp_path, rng):
    path = tmp_path / "tiny.png"
    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(path)
    res = run(path, SourceOptions(crop=(5, 0, 5, 0)))
    assert res.reason == "crop_too_large" and res.data == b""


@pytest.mark.parametrize(
    ("brightest", "threshold", "kept"),
    [(40, 40, False), (40, 39, True), (41, 40, True), (0, 0, False)],
)
def test_drop_dark_max(tmp_path, rng, brightest, threshold, kept):
    gray = rng.integers(0, brightest + 1, (16, 24), dtype=np.uint8)
    gray[3, 4] = brightest
    path = tmp_path / "dark.png"
    Image.fromarray(gray).save(path)
    res = run(path, SourceOptions(drop_dark_max=threshold), format="png")
    if kept:
        assert np.array_equal(stored(res), gray)
    else:
        assert res.reason == "dark_frame"
        assert not res.ok and res.data == b""


# ---------------------------------------------------------------- metadata, decode


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_sha256_is_of_the_stored_bytes(tmp_path, rng, fmt):
    path = tmp_path / "x.png"
    Image.fromarray(smooth_rgb(rng, 20, 30)).save(path)
    res = run(path, format=fmt)
    assert res.ok
    assert res.meta["sha256"] == hashlib.sha256(res.data).hexdigest()
    assert res.ext == {"jpeg": "jpg", "png": "png"}[fmt]


def test_decode_reports_stored_size_and_depth(rng):
    buf = io.BytesIO()
    Image.fromarray(counts14(rng, 12, 20)).save(buf, "PNG")
    dec = decode(buf.getvalue(), max_pixels=10**6)
    assert (dec.width, dec.height, dec.bit_depth, dec.format) == (20, 12, 16, "PNG")


def test_decode_rejects_images_over_max_pixels(rng):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 20), dtype=np.uint8)).save(buf, "PNG")
    with pytest.raises(Exception) as err:
        decode(buf.getvalue(), max_pixels=239)
    assert getattr(err.value, "reason", None) == "too_large"
    assert decode(buf.getvalue(), max_pixels=240).width == 20
