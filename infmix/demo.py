"""Small fake datasets in the layouts of real ones, for the demo and the tests.

Thermal-looking frames are a smooth background with warm blobs and sensor noise; video
sequences move the blobs a little per frame, so consecutive frames are near-identical. A few
planted problems (an exact copy, an empty file, a truncated JPEG, a text file named .png) show
how the build records them. Everything comes from one seeded generator: same seed, same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def thermal_frame(
    rng: np.random.Generator, h: int, w: int, shift: float = 0.0, blobs: np.ndarray | None = None
) -> np.ndarray:
    """Float image in [0, 1]: background gradient, warm blobs, noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.25 + 0.2 * (y / h) + 0.05 * np.sin(x / 17.0)
    if blobs is None:
        blobs = rng.uniform([0, 0, 4, 0.2], [w, h, 14, 0.6], size=(4, 4))
    for bx, by, r, amp in blobs:
        img += amp * np.exp(-((x - bx - shift) ** 2 + (y - by) ** 2) / (2 * r * r))
    img += rng.normal(0, 0.01, (h, w))
    return np.clip(img, 0, 1)


def rgb_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([c[i, 0] + c[i, 1] * x / w + c[i, 2] * y / h for i in range(3)], -1)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 1, 3)
    return (np.clip(img / img.max(), 0, 1) * 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, fmt: str | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt, **kw)


def _u8(img: np.ndarray) -> np.ndarray:
    return (img * 255).round().astype(np.uint8)


def write_ir_still(root: Path, rng: np.random.Generator) -> int:
    for split, n in (("train", 8), ("val", 4)):
        for i in range(n):
            _save(
                root / "images" / split / f"{i:04d}.jpg",
                _u8(thermal_frame(rng, 128, 160)),
                quality=92,
            )
    _save(root / "images" / "extra" / "0000.png", _u8(thermal_frame(rng, 96, 128)))
    (root / "images" / "val" / "train_0000_copy.jpg").write_bytes(
        (root / "images" / "train" / "0000.jpg").read_bytes()
    )
    bad = root / "images" / "broken"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "empty.jpg").write_bytes(b"")
    good = (root / "images" / "train" / "0001.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "notes.png").write_text("this is not an image\n")
    return 17


def write_ir_video(root: Path, rng: np.random.Generator) -> int:
    for s in range(3):
        blobs = rng.uniform([0, 0, 4, 0.2], [160, 128, 14, 0.6], size=(4, 4))
        for f in range(12):
            img = thermal_frame(rng, 128, 160, shift=0.5 * f, blobs=blobs)
            _save(root / f"seq{s:02d}" / f"{f + 1}.jpg", _u8(img), quality=92)
    return 36


def write_thermal16(root: Path, rng: np.random.Generator) -> int:
    """14-bit sensor counts (radiometric 16-bit files): TIFF and 16-bit PNG."""
    for i in range(6):
        counts = (6000 + thermal_frame(rng, 120, 160) * 6000).astype(np.uint16)
        fmt = "tiff" if i % 2 == 0 else "png"
        _save(root / "thermal_16_bit" / f"frame_{i:05d}.{fmt}", counts)
    return 6


def write_paired(root: Path, rng: np.random.Generator) -> int:
    """LLVIP layout: infrared/{train,test} beside visible/{train,test}, 3-channel gray JPEGs."""
    n = 0
    for split, count in (("train", 6), ("test", 3)):
        for i in range(count):
            gray = _u8(thermal_frame(rng, 128, 160))
            _save(root / "infrared" / split / f"{i:06d}.jpg", np.stack([gray] * 3, -1))
            _save(root / "visible" / split / f"{i:06d}.jpg", rgb_scene(rng, 128, 160))
            n += 2
    return n


def write_imagenet(root: Path, rng: np.random.Generator) -> int:
    for c in ("n01440764", "n01443537", "n01484850"):
        for i in range(6):
            _save(root / c / f"{c}_{i:05d}.JPEG", rgb_scene(rng, 150, 200), "JPEG")
    return 18


def write_coco(root: Path, rng: np.random.Generator) -> int:
    for i in range(8):
        _save(root / "train2017" / f"{i:012d}.jpg", rgb_scene(rng, 160, 240))
    return 8


WRITERS = {
    "ir_still": write_ir_still,
    "ir_video": write_ir_video,
    "thermal16": write_thermal16,
    "rgbt_pairs": write_paired,
    "imagenet": write_imagenet,
    "coco": write_coco,
}


def write_demo_sources(out: Path | str, seed: int = 0) -> dict[str, int]:
    """Write every demo dataset under `out`; returns files written per dataset."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    return {name: fn(out / name, rng) for name, fn in WRITERS.items()}
