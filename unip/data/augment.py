"""RandomResizedCrop + horizontal flip of one encoded image, straight to a uint8 grayscale array.

The crop box is drawn from the header's size before anything is decoded, so a JPEG can be
decoded at the largest DCT reduction (1/2, 1/4, 1/8) that still leaves the crop at least
`size` pixels on each side: libjpeg then skips most of the inverse DCT. One channel, uint8
throughout: a full-size decode is resized by torch's uint8 bicubic kernel (antialiased, as
torchvision resizes tensors; 1.6x Pillow's speed), a reduced one by Pillow, whose box may
fall between pixels. No float image on the CPU.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from infmix.config import ProcessConfig

RATIO = (3 / 4, 4 / 3)
# infmix's process.max_pixels: larger headers are rejected undecoded
MAX_PIXELS = ProcessConfig.model_fields["max_pixels"].default


def sample_box(
    rng: random.Random, width: int, height: int, scale: tuple[float, float], ratio=RATIO
) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params`, drawn from `rng`: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height  # fallback: the central crop at the nearest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def reduction(w: int, h: int, size: int) -> int:
    """The largest JPEG DCT scale denominator that keeps a w x h crop >= size on both sides."""
    for factor in (8, 4, 2):
        if min(w, h) >= size * factor:
            return factor
    return 1


def random_crop(
    data: bytes,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.2, 1.0),
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, bool]:
    """Decode `data`, crop a random box and resize it to size x size (bicubic), grayscale.

    Returns the (size, size) uint8 array and whether it is to be flipped (the caller flips
    while copying into the batch, for free). Raises on anything undecodable.
    """
    im = Image.open(io.BytesIO(data))
    width, height = im.size
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} exceeds max_pixels {max_pixels}")
    left, top, w, h = sample_box(rng, width, height, scale)
    flip = rng.random() < 0.5
    s = 1
    if im.format == "JPEG":  # draft also decodes a colour JPEG's luma plane only
        f = reduction(w, h, size)
        drafted = im.draft("L", (width // f, height // f))
        if drafted is not None:
            s = width / drafted[1][2]
    if im.mode != "L":
        im = im.convert("L")
    if s == 1:
        return resize_crop(np.asarray(im), (left, top, w, h), size), flip
    box = (left / s, top / s, (left + w) / s, (top + h) / s)
    out = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out), flip


def resize_crop(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The (left, top, w, h) crop of a uint8 (H, W) array, bicubic-resized (antialiased) to
    size x size, in uint8."""
    left, top, w, h = box
    # a copy: Pillow's arrays are read-only, and the kernel runs fastest on contiguous rows
    crop = torch.from_numpy(np.array(image[top : top + h, left : left + w]))[None, None]
    out = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)
    return out[0, 0].numpy()
