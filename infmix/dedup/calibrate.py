"""Choosing the near-duplicate threshold: precision and recall on labelled pairs.

Pairs come from a CSV the user writes (`path_a,path_b,label`, label 1 for "the same picture",
0 for "different") or from the synthetic generator that calibrated the default (planted
shifts, brightness/contrast, JPEG, rescaling, noise, next frames; other scenes and scenes with
one small object added). Images go through the build's own decoding and grayscale conversion.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from infmix.config import ProcessConfig
from infmix.dedup.descriptor import thumb_descriptor
from infmix.dedup.synthetic import planted_pairs
from infmix.errors import InfmixError
from infmix.process import read_file
from infmix.steps.decode import Rejected, decode
from infmix.steps.normalise import to_gray

DEFAULT_THRESHOLDS = (0.97, 0.975, 0.98, 0.984, 0.986, 0.988, 0.99, 0.992, 0.995)


def load_gray(path: str | Path, cfg: ProcessConfig | None = None) -> Image.Image:
    cfg = cfg or ProcessConfig()
    try:
        dec = decode(read_file(str(path), cfg.max_file_bytes), cfg.max_pixels)
        return to_gray(dec.image, cfg.percentiles)[0]
    except Rejected as e:
        raise InfmixError(f"{path}: {e}") from None


def read_pairs(path: Path) -> list[tuple[Path, Path, bool]]:
    """CSV rows `path_a,path_b,label`; relative paths are relative to the CSV's folder."""
    rows = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#") or row[0] == "path_a":
                continue
            if len(row) != 3 or row[2].strip() not in ("0", "1"):
                raise InfmixError(f"{path}:{n}: expected path_a,path_b,label (0 or 1)")
            a, b = (path.parent / p.strip() for p in row[:2])
            rows.append((a, b, row[2].strip() == "1"))
    if not rows:
        raise InfmixError(f"{path}: no pairs")
    return rows


def similarities(
    pairs: Iterable[tuple[Image.Image, Image.Image]],
    embed: Callable[[list[Image.Image]], np.ndarray],
) -> np.ndarray:
    sims = []
    for a, b in pairs:
        va, vb = embed([a, b])
        sims.append(float(np.dot(va.astype(np.float64), vb.astype(np.float64))))
    return np.array(sims)


def builtin_embed(images: list[Image.Image]) -> np.ndarray:
    return np.stack([thumb_descriptor(im) for im in images])


def scores(sims: np.ndarray, labels: np.ndarray, thresholds: Iterable[float]) -> list[dict]:
    """Precision/recall of "similarity >= threshold" against the labels, per threshold."""
    out = []
    for t in thresholds:
        pred = sims >= t
        tp = int((pred & labels).sum())
        fp = int((pred & ~labels).sum())
        fn = int((~pred & labels).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        out.append(
            {"threshold": t, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}
        )
    return out


def synthetic_sims(n_scenes: int, seed: int, embed=builtin_embed) -> tuple[np.ndarray, ...]:
    """Similarities, labels and change names of the planted synthetic pairs."""
    sims, labels, changes = [], [], []
    for p in planted_pairs(n_scenes, seed=seed):
        sims.append(similarities([(Image.fromarray(p.a), Image.fromarray(p.b))], embed)[0])
        labels.append(p.duplicate)
        changes.append(p.change)
    return np.array(sims), np.array(labels), np.array(changes)


def file_sims(csv_path: Path, embed=builtin_embed) -> tuple[np.ndarray, np.ndarray]:
    rows = read_pairs(csv_path)
    pairs = ((load_gray(a), load_gray(b)) for a, b, _ in rows)
    return similarities(pairs, embed), np.array([lab for _, _, lab in rows])
