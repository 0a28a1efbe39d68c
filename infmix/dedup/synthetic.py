"""Planted near-duplicates and look-alike distinct pairs, for calibration, tests and benchmarks.

Scenes are thermal-like: gradients, textures at several scales, hard-edged structures and warm
objects. Positives apply one change that leaves "the same picture": a shift of a few pixels,
+-10% brightness or contrast, JPEG re-encoding, 0.5x or 2x rescaling, sensor noise, or the
next frame of a slowly moving scene. Negatives are other scenes and the same scene with one
small warm object added (a 20x50 px pedestrian in 640x512).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

POSITIVE_CHANGES = (
    "shift",
    "brighter",
    "darker",
    "more_contrast",
    "less_contrast",
    "jpeg",
    "half_size",
    "double_size",
    "noise",
    "next_frame",
)
NEGATIVE_CHANGES = ("other_scene", "small_object")


@dataclass
class Scene:
    base: np.ndarray  # float64 background in [0, 1]
    objects: list[tuple[float, float, float, float, float]]  # x, y, rx, ry, amplitude


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.normal(0, 1, (max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC))


def make_scene(rng: np.random.Generator, h: int = 512, w: int = 640) -> Scene:
    y = np.linspace(0, 1, h)[:, None]
    x = np.linspace(0, 1, w)[None, :]
    base = 0.3 + 0.2 * rng.uniform(-1, 1) * y + 0.1 * rng.uniform(-1, 1) * x
    for cell, amp in ((64, 0.06), (16, 0.03), (4, 0.015)):
        base = base + amp * _smooth_noise(rng, h, w, cell)
    for _ in range(int(rng.integers(2, 6))):  # buildings, roads: hard edges
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        bw, bh = int(rng.integers(w // 16, w // 3)), int(rng.integers(h // 16, h // 3))
        base[y0 : y0 + bh, x0 : x0 + bw] += rng.uniform(-0.12, 0.12)
    objects = [
        (
            rng.uniform(0, w),
            rng.uniform(0, h),
            rng.uniform(6, 30),
            rng.uniform(8, 40),
            rng.uniform(0.15, 0.35),
        )
        for _ in range(int(rng.integers(2, 7)))
    ]
    return Scene(base, objects)


def render(scene: Scene, dx: float = 0.0, extra: list | None = None) -> np.ndarray:
    h, w = scene.base.shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = scene.base.copy()
    for bx, by, rx, ry, amp in scene.objects + (extra or []):
        img += amp * np.exp(-(((xx - bx - dx) / rx) ** 2 + ((yy - by) / ry) ** 2))
    return img


def to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _jpeg(u8: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _resize(u8: np.ndarray, s: float) -> np.ndarray:
    h, w = u8.shape
    size = (round(w * s), round(h * s))
    return np.asarray(Image.fromarray(u8).resize(size, Image.Resampling.BILINEAR))


def _shifted(scene: Scene, k: int) -> np.ndarray:
    """The same scene seen k pixels down-right: a camera that moved a little."""
    h, w = scene.base.shape
    padded = Scene(
        np.pad(scene.base, k, mode="reflect"),
        [(x + k, y + k, rx, ry, a) for x, y, rx, ry, a in scene.objects],
    )
    return render(padded)[2 * k : 2 * k + h, 2 * k : 2 * k + w]


def changed(scene: Scene, change: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 image of `scene` after one named change."""
    img = render(scene)
    u8 = to_u8(img + rng.normal(0, 0.004, img.shape))
    mean = img.mean()
    h, w = img.shape
    ops = {
        "shift": lambda: to_u8(_shifted(scene, int(rng.integers(2, 4)))),
        "brighter": lambda: to_u8(img * 1.1),
        "darker": lambda: to_u8(img * 0.9),
        "more_contrast": lambda: to_u8((img - mean) * 1.1 + mean),
        "less_contrast": lambda: to_u8((img - mean) * 0.9 + mean),
        "jpeg": lambda: _jpeg(u8, 70),
        "half_size": lambda: _resize(u8, 0.5),
        "double_size": lambda: _resize(u8, 2.0),
        "noise": lambda: to_u8(img + rng.normal(0, 0.02, img.shape)),
        "next_frame": lambda: to_u8(
            render(scene, dx=float(rng.uniform(1, 3))) + rng.normal(0, 0.004, img.shape)
        ),
        "other_scene": lambda: changed(make_scene(rng, h, w), "noise", rng),
        "small_object": lambda: to_u8(
            render(
                scene,
                extra=[
                    (
                        float(rng.uniform(40, w - 40)),
                        float(rng.uniform(60, h - 60)),
                        10.0,
                        25.0,
                        0.35,
                    )
                ],
            )
        ),
    }
    return ops[change]()


@dataclass
class Pair:
    a: np.ndarray
    b: np.ndarray
    change: str
    duplicate: bool


def planted_pairs(n_scenes: int, seed: int = 0, h: int = 512, w: int = 640) -> Iterator[Pair]:
    """For each scene: one pair per positive change and one per negative change."""
    rng = np.random.default_rng(seed)
    for _ in range(n_scenes):
        scene = make_scene(rng, h, w)
        original = to_u8(render(scene) + rng.normal(0, 0.004, scene.base.shape))
        for change in POSITIVE_CHANGES:
            yield Pair(original, changed(scene, change, rng), change, True)
        for change in NEGATIVE_CHANGES:
            yield Pair(original, changed(scene, change, rng), change, False)
