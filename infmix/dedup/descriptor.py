"""The built-in near-duplicate descriptor: band-passed thumbnail + edge-energy map, 288-d.

Both halves are 12x12 maps sampled from a 48x48 area-averaged thumbnail, so sensor noise, JPEG
artefacts and 0.5x-2x rescaling barely touch them. The band-pass half subtracts the thumbnail's
4x4 low-pass (the sky/ground gradients that make unrelated thermal scenes look alike). The
edge half is the gradient magnitude: a shift of a few pixels moves edges without changing how
much edge each cell holds, while a new object, even a small one, adds a ring of edges; this is
what separates "the same frame, moved" from "the same street, plus a pedestrian". A Gaussian
blur before sampling cancels the thin +/- strips that shifts leave. Each half has zero mean
and unit norm (brightness and contrast cancel); the cosine of two descriptors is the mean of
the two halves' correlations. Calibrated in infmix.dedup.calibrate; no model weights.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

GRID = 12
DIM = 2 * GRID * GRID
_SUB = 4  # fine thumbnail = GRID * _SUB pixels a side
_FINE = GRID * _SUB
_LOW = 4
_SIGMA = 1.5  # blur, in fine-thumbnail pixels


def _box_down(n: int, m: int) -> np.ndarray:
    """(m, n) matrix averaging n samples into m equal cells (n a multiple of m)."""
    return np.kron(np.eye(m), np.full((1, n // m), m / n))


def _linear_up(m: int, n: int) -> np.ndarray:
    """(n, m) matrix of centre-aligned linear interpolation from m to n samples."""
    x = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, m - 1)
    w = x - lo
    up = np.zeros((n, m))
    up[np.arange(n), lo] += 1 - w
    up[np.arange(n), hi] += w
    return up


@cache
def _operators() -> tuple[np.ndarray, np.ndarray]:
    """P: blur then average to the grid (GRID x FINE); M: the 4x4 low-pass (FINE x FINE)."""
    x = np.arange(_FINE, dtype=np.float64)
    blur = np.exp(-0.5 * ((x[:, None] - x[None, :]) / _SIGMA) ** 2)
    blur /= blur.sum(axis=1, keepdims=True)  # edge-clamped borders
    pool = _box_down(_FINE, GRID) @ blur
    low = _linear_up(_LOW, _FINE) @ _box_down(_FINE, _LOW)
    return pool.astype(np.float32), low.astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    v = v.ravel() - v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else np.zeros_like(v)


def thumb_descriptor(im: Image.Image) -> np.ndarray:
    """(288,) float32 with unit norm (zeros for a flat image)."""
    if im.mode != "L":
        im = im.convert("L")
    small = im.resize((_FINE, _FINE), Image.Resampling.BOX, reducing_gap=2.0)
    t = np.asarray(small, np.float32)
    pool, low = _operators()
    band = t - low @ t @ low.T
    gy, gx = np.gradient(t)
    edges = np.sqrt(gx * gx + gy * gy)
    v = np.concatenate([_unit(pool @ band @ pool.T), _unit(pool @ edges @ pool.T)])
    n = float(np.linalg.norm(v))
    return (v / n if n > 1e-6 else v).astype(np.float32)
