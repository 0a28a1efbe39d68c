"""Conversion of any decoded image to 8-bit single-channel grayscale.

Colour -> ITU-R BT.601 luma exactly as Pillow's `L` conversion computes it. High-bit-depth
thermal (16-bit, 32-bit int or float) -> per-image linear stretch between two percentiles,
computed in float64 so the result matches the reference formula bit for bit.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from infmix.steps.decode import Rejected

HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_VIA_RGB = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"}


def stretch(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[np.ndarray, dict]:
    """clip(round((v - p_lo) / (p_hi - p_lo) * 255), 0, 255); a constant image gives 0."""
    v = values.astype(np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise Rejected("corrupt", "no finite pixel values")
    lo, hi = (float(x) for x in np.percentile(finite, percentiles))
    params = {"method": "stretch", "low": lo, "high": hi}
    if hi <= lo:
        return np.zeros(v.shape, np.uint8), params
    v = np.nan_to_num(v, nan=lo, posinf=hi, neginf=lo)
    out = np.clip(np.round((v - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    return out, params


def to_gray(im: Image.Image, percentiles: tuple[float, float]) -> tuple[Image.Image, dict]:
    """Grayscale `L` image and a record of how it was made."""
    mode = im.mode
    if mode == "L":
        return im, {"method": "none"}
    if mode in HIGH_BIT_MODES:
        out, params = stretch(np.asarray(im), percentiles)
        return Image.fromarray(out, "L"), params
    if mode in ("LA", "La"):
        return im.getchannel(0), {"method": "drop_alpha"}
    if mode == "1":
        return im.convert("L"), {"method": "bilevel"}
    if mode in ("RGB", "RGBA"):
        return im.convert("L"), {"method": "bt601_luma"}
    if mode in _VIA_RGB:
        return im.convert("RGB").convert("L"), {"method": "bt601_luma", "via": mode}
    raise Rejected("unsupported_mode", f"image mode {mode}")
