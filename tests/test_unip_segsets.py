"""unip.data segmentation: the four set layouts and their errors, the mmseg transforms, the demo."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unip.data import segaug
from unip.data.segaug import SEG_MEAN, SEG_STD, flip, pad, photometric, random_crop, rescale
from unip.data.segdemo import make_demo_segset
from unip.data.segsets import (
    MFNET_CLASSES,
    SCUT_CLASSES,
    SODA_CLASSES,
    open_segset,
    read_classes,
)
from unip.errors import UnipError

H, W = 24, 32


def save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def gray(value: int, h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def ids_label(k: int, seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    label = np.random.default_rng(seed).integers(0, k, (h, w)).astype(np.uint8)
    label[0, :4] = 255
    return label


def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


# ---- layouts ---------------------------------------------------------------------------


@pytest.fixture
def soda(tmp_path) -> Path:
    root = tmp_path / "soda"
    for n, name in enumerate(["c", "a", "b", "d"]):
        save(root / "JPEGImages" / f"{name}.jpg", gray(40 + 50 * n))
        save(root / "SegmentationClassPNG" / f"{name}.png", ids_label(21, n))
    (root / "train_infrared.txt").write_text("c\n\na.jpg\r\nb\n")
    (root / "test_infrared.txt").write_text("d\n")
    return root


def test_soda_loads_in_split_file_order(soda):
    ds = open_segset("soda", soda, "train")
    assert ds.names == ["c", "a", "b"] and len(ds) == 3
    assert ds.classes == SODA_CLASSES and len(ds.classes) == 21
    assert len(set(ds.palette)) == 21 and all(len(c) == 3 for c in ds.palette)
    for i, value in enumerate([40, 90, 140]):
        image, label, name = ds[i]
        assert image.dtype == label.dtype == np.uint8 and image.shape == label.shape == (H, W)
        assert abs(float(image.mean()) - value) < 2  # JPEG, gray
        assert np.array_equal(label, ids_label(21, i))
        assert name == ds.names[i]
    assert open_segset("soda", soda, "test").names == ["d"]


def test_mfnet_reads_the_fourth_channel_or_a_one_channel_png(tmp_path):
    root = tmp_path / "mfnet"
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 20, 30
    rgba[..., 3] = np.arange(W, dtype=np.uint8)[None] * 3
    save(root / "images" / "00001D.png", rgba)
    save(root / "images" / "00002N.png", gray(77))
    for name in ("00001D", "00002N"):
        save(root / "labels" / f"{name}.png", ids_label(9))
    for split in ("train", "val", "test"):
        (root / f"{split}.txt").write_text("00002N\n00001D\n")
    ds = open_segset("mfnet", root, "val")
    assert ds.classes == MFNET_CLASSES and ds.names == ["00002N", "00001D"]
    assert np.array_equal(ds[0][0], gray(77))
    assert np.array_equal(ds[1][0], rgba[..., 3])
    assert np.array_equal(ds[1][1], ids_label(9))


def test_mfnet_prefers_a_thermal_folder(tmp_path):
    root = tmp_path / "mfnet"
    save(root / "images" / "x.png", np.zeros((H, W, 3), np.uint8))  # RGB only: not used
    save(root / "thermal" / "x.png", gray(123))
    save(root / "labels" / "x.png", ids_label(9))
    (root / "train.txt").write_text("x\n")
    image, _, _ = open_segset("mfnet", root, "train")[0]
    assert np.array_equal(image, gray(123))
    (root / "thermal").rename(root / "thermal_imgs")  # the folder name of UNIP's configs
    image, _, _ = open_segset("mfnet", root, "train")[0]
    assert np.array_equal(image, gray(123))


def test_mfnet_rgb_only_png_is_an_error(tmp_path):
    root = tmp_path / "mfnet"
    save(root / "images" / "x.png", np.zeros((H, W, 3), np.uint8))
    save(root / "labels" / "x.png", ids_label(9))
    (root / "test.txt").write_text("x\n")
    with pytest.raises(UnipError, match=r"x\.png.*4th channel"):
        open_segset("mfnet", root, "test")[0]


def scut_root(tmp_path: Path, raw: np.ndarray) -> Path:
    root = tmp_path / "scut"
    for name in ("b", "a", "c"):
        ext = "png" if name == "c" else "jpg"
        save(root / "images" / "test" / f"{name}.{ext}", gray(60))
        save(root / "labels" / "test" / f"{name}.png", raw)
    return root


def test_scut_remaps_cityscapes_ids(tmp_path):
    raw = np.zeros((H, W), np.uint8)
    cityscapes = [0, 7, 24, 25, 26, 27, 13, 21, 28, 17, 255]
    expected = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255]
    for j, v in enumerate(cityscapes):
        raw[:, j] = v
    ds = open_segset("scut", scut_root(tmp_path, raw), "test")
    assert ds.classes == SCUT_CLASSES and ds.names == ["a", "b", "c"]
    _, label, _ = ds[2]
    assert label.dtype == np.uint8 and label[0, : len(expected)].tolist() == expected
    assert (label[:, len(expected) :] == 0).all()  # raw 0 is background
    two = {0: 255, 7: 1, 24: 0, 25: 255}
    everything = {**two, **dict.fromkeys([13, 17, 21, 26, 27, 28], 255)}
    custom = open_segset("scut", ds.root, "test", classes=["x", "y"], label_map=everything)
    assert custom[0][1][0, : len(cityscapes)].tolist() == [255, 1, 0] + [255] * 8
    partial = open_segset("scut", ds.root, "test", classes=["x", "y"], label_map=two)
    with pytest.raises(UnipError, match=r"label ids \[13, 17, 21, 26, 27, 28\] are not in"):
        partial[0]  # a table that misses ids is an error, not a silent 'ignore'


def test_scut_ids_that_are_not_cityscapes_ids_are_an_error(tmp_path):
    """Labels already converted to 0-9 in the release's folders would otherwise come out as
    mostly 'ignore', with 7 read as road."""
    converted = np.tile(np.arange(10, dtype=np.uint8), (H, W // 10 + 1))[:, :W]
    ds = open_segset("scut", scut_root(tmp_path, converted), "test")
    with pytest.raises(UnipError, match=r"c\.png: label ids \[1, 2, 3, 4, 5, 6, 8, 9\] are not"):
        ds[2]
    with pytest.raises(UnipError, match=r"converted to 0-9 belong in the split-file layout"):
        ds[2]


def test_scut_converted_copy_in_unips_layout(tmp_path):
    """UNIP's configs read images/, labels/ (ids 0-9) and train.txt / val.txt."""
    root = tmp_path / "scut"
    label = np.tile(np.arange(10, dtype=np.uint8), (H, W // 10 + 1))[:, :W]
    label[0, 0] = 255
    for name in ("p", "q"):
        save(root / "images" / f"{name}.jpg", gray(50))
        save(root / "labels" / f"{name}.png", label)
    (root / "val.txt").write_text("q\np\n")
    ds = open_segset("scut", root, "val")
    assert ds.names == ["q", "p"] and np.array_equal(ds[0][1], label)  # ids used as stored
    label[1, 1] = 12
    save(root / "labels" / "q.png", label)
    with pytest.raises(UnipError, match=r"q\.png: label ids \[12\] are not in \[0, 10\)"):
        ds[0]
    with pytest.raises(UnipError, match=r"neither .*images/train/ .* nor .*train\.txt"):
        open_segset("scut", root, "train")
    (root / "labels" / "p.png").unlink()
    with pytest.raises(UnipError, match=r"1 of 2 labels are missing .*: p$"):
        open_segset("scut", root, "val")


def test_scut_unpaired_files_are_listed(tmp_path):
    root = scut_root(tmp_path, gray(0))
    (root / "images" / "test" / "a.jpg").unlink()
    with pytest.raises(UnipError, match=r"1 labels without an image .*: a$"):
        open_segset("scut", root, "test")
    save(root / "images" / "test" / "a.jpg", gray(60))
    (root / "labels" / "test" / "b.png").unlink()
    with pytest.raises(UnipError, match=r"1 images without a label .*: b$"):
        open_segset("scut", root, "test")
    with pytest.raises(UnipError, match="scut has splits train, val, test; got split 'dev'"):
        open_segset("scut", root, "dev")


def test_folder_stretches_16_bit_and_converts_rgb(tmp_path):
    root = tmp_path / "own"
    raw16 = (1000 + np.arange(H * W).reshape(H, W) * 3).astype(np.uint16)
    save(root / "images" / "t16.tif", raw16)
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3)).astype(np.uint8)
    save(root / "images" / "rgb.png", rgb)
    for name in ("t16", "rgb"):
        save(root / "labels" / f"{name}.png", ids_label(3))
    (root / "train.txt").write_text("t16\nrgb\n")
    ds = open_segset("folder", root, "train", classes=["a", "b", "c"])
    image16, _, _ = ds[0]
    lo, hi = 1000.0, 1000.0 + (H * W - 1) * 3
    reference = np.round((raw16.astype(np.float64) - lo) / (hi - lo) * 255)
    assert image16.dtype == np.uint8 and image16.min() == 0 and image16.max() == 255
    assert np.abs(image16.astype(int) - reference).max() == 0
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(ds[1][0].astype(int) - luma).max() <= 1


# ---- layout and pixel errors -------------------------------------------------------------


def test_missing_folder_split_file_and_listed_files_are_named(soda):
    with pytest.raises(UnipError, match=r"folder not found: .*nowhere"):
        open_segset("soda", soda / "nowhere", "train")
    (soda / "test_infrared.txt").unlink()
    with pytest.raises(UnipError, match=r"split file not found: .*test_infrared\.txt"):
        open_segset("soda", soda, "test")
    (soda / "JPEGImages" / "a.jpg").unlink()
    (soda / "JPEGImages" / "c.jpg").unlink()
    with pytest.raises(UnipError, match=r"2 of 3 images are missing from .*JPEGImages.*: c, a$"):
        open_segset("soda", soda, "train")
    (soda / "train_infrared.txt").write_text("b\n")
    (soda / "SegmentationClassPNG" / "b.png").unlink()
    with pytest.raises(UnipError, match=r"1 of 1 labels are missing .*SegmentationClassPNG.*: b"):
        open_segset("soda", soda, "train")
    for p in (soda / "SegmentationClassPNG").iterdir():
        p.unlink()
    (soda / "SegmentationClassPNG").rmdir()
    with pytest.raises(UnipError, match=r"folder not found: .*SegmentationClassPNG"):
        open_segset("soda", soda, "train")


def test_many_missing_files_show_the_count_and_first_few(tmp_path):
    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "train.txt").write_text("".join(f"m{i}\n" for i in range(8)))
    with pytest.raises(UnipError, match=r"8 of 8 images .*: m0, m1, m2, m3, m4, \.\.\.$"):
        open_segset("folder", root, "train", classes=["a"])


def folder_set(tmp_path: Path, image: np.ndarray, label: np.ndarray) -> Path:
    root = tmp_path / "own"
    save(root / "images" / "s.png", image)
    save(root / "labels" / "s.png", label)
    (root / "train.txt").write_text("s\n")
    return root


def test_size_mismatch_and_bad_label_ids_name_the_file(tmp_path):
    root = folder_set(tmp_path, gray(9), gray(1, H - 1, W))
    with pytest.raises(UnipError, match=r"labels.s\.png: label is 32x23 but its image .* 32x24"):
        open_segset("folder", root, "train", classes=["a", "b"])[0]
    label = ids_label(2)
    label[3, 3], label[4, 4] = 7, 2
    save(root / "labels" / "s.png", label)
    with pytest.raises(UnipError, match=r"s\.png: label ids \[2, 7\] are not in \[0, 2\)"):
        open_segset("folder", root, "train", classes=["a", "b"])[0]
    assert open_segset("folder", root, "train", classes=["a", "b", "c", "d", "e", "f", "g", "h"])[0]


def test_folder_needs_classes_and_kinds_are_checked(tmp_path):
    root = folder_set(tmp_path, gray(9), gray(0))
    with pytest.raises(UnipError, match="needs its class names"):
        open_segset("folder", root, "train")
    with pytest.raises(UnipError, match="unknown segmentation set kind 'voc'"):
        open_segset("voc", root, "train")
    with pytest.raises(UnipError, match="plain name"):
        open_segset("folder", root, "../train", classes=["a"])
    with pytest.raises(UnipError, match=r"label_map 3: 9"):
        open_segset("folder", root, "train", classes=["a"], label_map={3: 9})


def test_oversized_headers_are_refused_before_decoding(tmp_path):
    root = folder_set(tmp_path, gray(9), gray(0))
    with pytest.raises(UnipError, match=r"s\.png: 32x24 is over max_pixels=700"):
        open_segset("folder", root, "train", classes=["a"], max_pixels=700)[0]
    assert open_segset("folder", root, "train", classes=["a"], max_pixels=768)[0]
    # 108M pixels: over our default cap, under Pillow's own bomb error (2 x 89M)
    (root / "images" / "s.png").write_bytes(png_header(12_000, 9_000))
    with pytest.raises(UnipError, match="12000x9000 is over max_pixels=100000000"):
        open_segset("folder", root, "train", classes=["a"])[0]
    (root / "images" / "s.png").write_bytes(png_header(30_000, 30_000))
    with pytest.raises(UnipError, match=r"s\.png: .*900000000 pixels"):
        open_segset("folder", root, "train", classes=["a"], max_pixels=10**10)[0]


# ---- transforms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "scale", "ratio", "expected"),
    [
        ((480, 640), (2048, 512), 1.0, (512, 683)),  # min(3.2, 1.0667): w 682.67 -> 683
        ((100, 1000), (2048, 512), 1.0, (205, 2048)),  # the long side binds: 2.048
        ((480, 640), (2048, 512), 0.5, (256, 341)),  # target (1024, 256)
        ((360, 480), (2048, 512), 0.7, (358, 477)),  # target int(1433.6), int(358.4)
        ((40, 30), (64, 16), 2.0, (43, 32)),  # portrait: short side 30 -> 32
    ],
)
def test_rescale_size_follows_mmseg(hw, scale, ratio, expected):
    image, label = np.zeros(hw, np.uint8), np.zeros(hw, np.uint8)
    rng = np.random.default_rng(0)
    out, lab = rescale(image, label, rng, scale, (ratio, ratio))
    assert out.shape == lab.shape == expected
    if ratio == 1.0:
        assert segaug.test_resize(image, scale).shape == expected


def test_rescale_draws_the_ratio_uniformly():
    image = np.zeros((100, 200), np.uint8)
    for seed in range(5):
        r = np.random.default_rng(seed).random() * 1.5 + 0.5
        f = min(int(2048 * r) / 200, int(512 * r) / 100)
        out, _ = rescale(image, image, np.random.default_rng(seed))
        assert out.shape == (int(100 * f + 0.5), int(200 * f + 0.5))


def test_rescale_keeps_label_ids_and_blends_the_image():
    rng = np.random.default_rng(3)
    label = rng.choice(np.array([3, 7, 255], np.uint8), (20, 30))
    image = (label.astype(np.uint16) * 97 % 256).astype(np.uint8)
    out, lab = rescale(image, label, rng, (64, 37), (1.0, 1.0))
    assert set(np.unique(lab).tolist()) == {3, 7, 255}
    assert not set(np.unique(out).tolist()) <= set(np.unique(image).tolist())  # bilinear


def offsets(seed: int, n: int, h: int, w: int, crop: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)) for _ in range(n)]


def ratio_ok(crop: np.ndarray) -> bool:
    counts = np.bincount(crop[crop != 255].ravel(), minlength=256)
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() < 0.75 * counts.sum()


def test_random_crop_retries_until_no_class_dominates():
    label = np.zeros((40, 40), np.uint8)
    label[:, 20:] = 1  # a crop of 8 is balanced only across the column 20 edge
    label[:, :3] = 255
    image = np.arange(1600, dtype=np.uint32).reshape(40, 40).astype(np.uint8)
    tested = 0
    for seed in range(40):
        draws = offsets(seed, 11, 40, 40, 8)
        ok = [ratio_ok(label[t : t + 8, s : s + 8]) for t, s in draws[:10]]
        if ok[0] or not any(ok):
            continue
        t, s = draws[ok.index(True)]
        out, lab = random_crop(image, label, np.random.default_rng(seed), 8)
        assert np.array_equal(lab, label[t : t + 8, s : s + 8]) and ratio_ok(lab)
        assert np.array_equal(out, image[t : t + 8, s : s + 8])
        tested += 1
    assert tested >= 5


def test_random_crop_without_a_good_crop_keeps_the_last_draw():
    """mmseg checks 10 boxes, drawing a new one after each failure: the 11th is kept."""
    label = np.zeros((30, 30), np.uint8)
    label[0, 0] = 1  # one pixel of class 1: no crop of 10 is balanced
    image = np.arange(900, dtype=np.uint32).reshape(30, 30).astype(np.uint8)
    for seed in range(3):
        t, s = offsets(seed, 11, 30, 30, 10)[10]
        out, _ = random_crop(image, label, np.random.default_rng(seed), 10)
        assert np.array_equal(out, image[t : t + 10, s : s + 10])
        t, s = offsets(seed, 1, 30, 30, 10)[0]  # cat_max_ratio 1: no check, the first draw
        out, _ = random_crop(image, label, np.random.default_rng(seed), 10, cat_max_ratio=1.0)
        assert np.array_equal(out, image[t : t + 10, s : s + 10])
    ignored = np.full((30, 30), 255, np.uint8)  # no labelled pixel at all: never balanced
    t, s = offsets(0, 11, 30, 30, 10)[10]
    out, _ = random_crop(image, ignored, np.random.default_rng(0), 10)
    assert np.array_equal(out, image[t : t + 10, s : s + 10])
    small = np.zeros((5, 6), np.uint8)
    out, lab = random_crop(small, small, np.random.default_rng(0), 10)
    assert out.shape == lab.shape == (5, 6)


def test_flip_moves_image_and_label_together():
    label = np.random.default_rng(0).integers(0, 5, (6, 9)).astype(np.uint8)
    image = label * 40
    flipped = 0
    for seed in range(20):
        out, lab = flip(image, label, np.random.default_rng(seed))
        assert np.array_equal(out, lab * 40)
        is_flipped = np.array_equal(lab, label[:, ::-1])
        assert is_flipped == (np.random.default_rng(seed).random() < 0.5)
        flipped += is_flipped
    assert 0 < flipped < 20
    assert np.array_equal(flip(image, label, np.random.default_rng(0), p=1.0)[0], image[:, ::-1])


def photometric_reference(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg PhotoMetricDistortion on 3 equal channels, as a per-value table in float32."""
    table = np.arange(256, dtype=np.float32)
    if rng.integers(2):  # brightness
        table = np.floor(np.clip(table + np.float32(rng.uniform(-32, 32)), 0, 255))
    mode = rng.integers(2)
    contrast = rng.integers(2)
    if contrast:
        table = np.floor(np.clip(table * np.float32(rng.uniform(0.5, 1.5)), 0, 255))
    del mode  # saturation and hue leave gray pixels gray: the same either way
    return table.astype(np.uint8)[image]


def test_photometric_matches_mmseg_on_gray():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    changed = 0
    for seed in range(30):
        out = photometric(image, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.array_equal(out, photometric_reference(image, np.random.default_rng(seed)))
        changed += not np.array_equal(out, image)
    assert 15 < changed < 30  # 3 in 4 draws change the image


def test_pad_fills_bottom_right():
    image, label = np.full((5, 7), 9, np.uint8), np.full((5, 7), 2, np.uint8)
    out, lab = pad(image, label, crop=12)
    assert out.shape == lab.shape == (12, 12)
    assert (out[:5, :7] == 9).all() and out.sum() == 9 * 35
    assert (lab[:5, :7] == 2).all() and (lab[5:] == 255).all() and (lab[:, 7:] == 255).all()
    big = np.ones((20, 30), np.uint8)
    assert pad(big, big, crop=12)[0].shape == (20, 30)


def test_train_transform_shapes_and_seed_determinism():
    label = np.zeros((48, 64), np.uint8)
    label[20:, :] = 1
    label[30:40, 10:30] = 2
    image = (label * 80 + 20).astype(np.uint8)
    runs = [
        segaug.train_transform(image, label, np.random.default_rng(s), 32, (128, 32))
        for s in (0, 0, 1, 2, 3)
    ]
    for out, lab, (h, w) in runs:
        assert out.shape == lab.shape == (32, 32) and out.dtype == lab.dtype == np.uint8
        assert set(np.unique(lab).tolist()) <= {0, 1, 2, 255}
        assert (out[h:] == 0).all() and (out[:, w:] == 0).all() and (lab[h:] == 255).all()
    assert any(h < 32 or w < 32 for _, _, (h, w) in runs)  # some draws are padded
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert any(not np.array_equal(runs[0][0], r[0]) for r in runs[2:])
    assert round(SEG_MEAN, 4) == 96.9255 and round(SEG_STD, 4) == 47.889


# ---- the demo set ----------------------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_demo_set_is_deterministic_and_refuses_other_folders(tmp_path):
    kw = dict(n_train=3, n_test=2, size=(48, 64))
    make_demo_segset(tmp_path / "a", seed=5, **kw)
    make_demo_segset(tmp_path / "b", seed=5, **kw)
    make_demo_segset(tmp_path / "c", seed=6, **kw)
    a = tree(tmp_path / "a")
    assert a == tree(tmp_path / "b") and a != tree(tmp_path / "c")
    assert len(a) == 2 * 5 + 4
    assert a["val.txt"] == a["test.txt"] == b"demo_0003\ndemo_0004\n"
    make_demo_segset(tmp_path / "a", seed=5, **kw)  # the same set again: nothing to do
    with pytest.raises(UnipError, match="not empty"):
        make_demo_segset(tmp_path / "a", seed=6, **kw)
    assert tree(tmp_path / "a") == a
    (tmp_path / "empty").mkdir()
    make_demo_segset(tmp_path / "empty", seed=5, **kw)
    assert tree(tmp_path / "empty") == a
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "empty"]  # no temps


def test_demo_set_loads_and_its_classes_are_separable(tmp_path):
    root = tmp_path / "demo"
    classes = make_demo_segset(root)
    assert classes == read_classes(root / "classes.txt")
    assert classes == ["background", "sky", "road", "person", "car"]
    train = open_segset("folder", root, "train", classes=classes)
    test = open_segset("folder", root, "test", classes=classes)
    assert len(train) == 24 and len(test) == 8 and set(train.names).isdisjoint(test.names)
    samples = [train[i] for i in range(len(train))]
    assert all(im.shape == lab.shape == (256, 320) for im, lab, _ in samples)
    labels = np.stack([lab for _, lab, _ in samples])
    images = np.stack([im for im, _, _ in samples])
    assert all((labels[i] == 3).any() and (labels[i] == 4).any() for i in range(24))
    medians = [np.median(images[labels == k]) for k in range(5)]
    sky, road, background, person, car = (medians[i] for i in (1, 2, 0, 3, 4))
    assert sky + 20 < road < background < car < person  # intensity bands
    rows = np.nonzero(labels == 1)[1]
    assert rows.max() < 256 * 0.45 and np.nonzero(labels == 2)[1].min() > 256 * 0.3
