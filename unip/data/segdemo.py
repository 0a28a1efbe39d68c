"""A small generated thermal street-scene segmentation set in the `folder` layout.

Cold dark sky above a skyline, a mid-grey background of buildings, a cool road trapezoid to a
vanishing point, warm cars with hot wheels and engine, hot pedestrians; blur, then sensor
noise. Each class has its own intensity band and place, so a small model learns it quickly.
Written into a temporary folder renamed into place: same seed, same bytes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from unip.errors import UnipError

CLASSES = ["background", "sky", "road", "person", "car"]
BACKGROUND, SKY, ROAD, PERSON, CAR = range(5)


def _blob(
    img: np.ndarray, lab: np.ndarray, box: tuple[float, float, float, float], value, cls, p=2.0
) -> None:
    """Paint a superellipse |dx|^p + |dy|^p <= 1 filling box (x0, y0, x1, y1); p > 2 rounds a
    rectangle's corners. `value` is a number or a function of the box's vertical coordinate
    dy in [-1, 1] (top to bottom)."""
    h, w = lab.shape
    x0, y0, x1, y1 = box
    c0, r0 = max(int(x0), 0), max(int(y0), 0)
    c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    if c1 <= c0 or r1 <= r0:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    dx = (xx - (x0 + x1) / 2) / ((x1 - x0) / 2)
    dy = (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
    inside = np.abs(dx) ** p + np.abs(dy) ** p <= 1
    fill = value(dy) if callable(value) else np.full(dy.shape, value, np.float32)
    img[r0:r1, c0:c1][inside] = fill[inside]
    lab[r0:r1, c0:c1][inside] = cls


def _car(img, lab, rng, cx: float, bottom: float, width: float) -> None:
    height = width * rng.uniform(0.45, 0.6)
    top, body = bottom - height, rng.uniform(150, 172)
    _blob(img, lab, (cx - width / 2, top, cx + width / 2, bottom - 0.1 * height), body, CAR, 4)
    # the warm engine / exhaust area in the lower body, then hot wheels
    engine = (cx - width / 4, top + 0.5 * height, cx + width / 4, bottom - 0.15 * height)
    _blob(img, lab, engine, body + 25, CAR, 4)
    r = 0.13 * width
    for wx in (cx - 0.32 * width, cx + 0.32 * width):
        _blob(img, lab, (wx - r, bottom - 2 * r, wx + r, bottom), rng.uniform(225, 245), CAR)


def _person(img, lab, rng, cx: float, feet: float, height: float) -> None:
    warm = rng.uniform(205, 230)
    width = height * rng.uniform(0.28, 0.36)
    head = 0.2 * height

    def body(dy):  # a little warmer at the torso than at the legs
        return warm + 8 * (dy < 0)

    trunk = (cx - width / 2, feet - height + head * 0.9, cx + width / 2, feet)
    _blob(img, lab, trunk, body, PERSON, 3)
    skull = (cx - head / 2.4, feet - height, cx + head / 2.4, feet - height + head)
    _blob(img, lab, skull, warm + 10, PERSON)


def _smooth(img: np.ndarray) -> np.ndarray:
    """One pass of the separable [1, 2, 1] / 4 filter: the slight blur of thermal optics."""
    p = np.pad(img, 1, mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4


def scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair, uint8 (h, w)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = h * rng.uniform(0.32, 0.42)
    img = 112 + 10 * np.sin(x / rng.uniform(5, 11)) + 8 * np.sin(y / rng.uniform(4, 9))
    lab = np.full((h, w), BACKGROUND, np.uint8)
    edges = np.sort(rng.uniform(0, w, 6)).astype(int)
    skyline = np.full(w, horizon, np.float32)
    for a, b in zip(np.r_[0, edges], np.r_[edges, w], strict=True):
        skyline[a:b] = horizon - rng.uniform(0.05, 0.5) * horizon
    sky = y < skyline[None, :]
    img[sky] = (35 + 30 * y / horizon)[sky]
    lab[sky] = SKY
    top, vx = horizon + 0.04 * h, w * rng.uniform(0.4, 0.6)
    t = np.clip((y - top) / (h - top), 0, 1)
    left = vx - 0.04 * w + t * (rng.uniform(-0.1 * w, 0.15 * w) - vx)
    right = vx + 0.04 * w + t * (rng.uniform(0.85 * w, 1.1 * w) - vx)
    road = (y >= top) & (x >= left) & (x <= right)
    img[road] = (78 + 14 * t)[road]
    lab[road] = ROAD
    objects = [
        ("car", rng.uniform(top + 0.3 * (h - top), h - 2)) for _ in range(rng.integers(1, 3))
    ]
    objects += [
        ("person", rng.uniform(horizon + 0.25 * (h - horizon), h - 2))
        for _ in range(rng.integers(1, 4))
    ]
    for kind, bottom in sorted(objects, key=lambda o: o[1]):  # far first: near ones occlude
        s = (bottom - horizon) / (h - horizon)
        if kind == "car":
            i = min(int(bottom) - 1, h - 1)
            cx = rng.uniform(float(left[i, 0]), float(right[i, 0]))
            _car(img, lab, rng, cx, bottom, max(s * 0.4 * w, 10))
        else:
            _person(img, lab, rng, rng.uniform(0.05 * w, 0.95 * w), bottom, max(s * 0.55 * h, 12))
    img = _smooth(img) + rng.normal(0, 3, (h, w))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lab


def _write(folder: Path, ids: dict[str, list[str]], h: int, w: int, seed: int) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for n, name in enumerate(ids["train"] + ids["test"]):
        image, label = scene(np.random.default_rng([seed, n]), h, w)
        Image.fromarray(image).save(folder / "images" / f"{name}.png")
        Image.fromarray(label).save(folder / "labels" / f"{name}.png")
    for split, names in ids.items():
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def make_demo_segset(
    root: Path,
    n_train: int = 24,
    n_test: int = 8,
    size: tuple[int, int] = (256, 320),
    seed: int = 0,
) -> list[str]:
    """Write the demo set at `root` (images/, labels/, train/val/test.txt, classes.txt).

    val lists the test ids. An existing empty `root`, or one holding exactly this set, is
    fine; any other non-empty `root` is refused. Returns the class names.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UnipError(f"{root} exists and is not a folder")
    names = [f"demo_{i:04d}" for i in range(n_train + n_test)]
    ids = {"train": names[:n_train], "val": names[n_train:], "test": names[n_train:]}
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, ids, size[0], size[1], seed)
        if root.is_dir() and any(root.iterdir()):
            if not _same_tree(tmp, root):
                raise UnipError(f"{root} is not empty and holds something else; pick a new folder")
            return list(CLASSES)
        if root.is_dir():
            root.rmdir()
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return list(CLASSES)
