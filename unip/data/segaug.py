"""mmsegmentation 0.x's train pipeline on one grayscale thermal image and its label, in uint8.

Resize (ratio-range, keep-ratio) -> RandomCrop (cat_max_ratio) -> RandomFlip ->
PhotoMetricDistortion -> Pad, with mmseg's sizes, draw order and uint8 truncation, but drawn
from a `np.random.Generator` passed in, so a sample's augmentation depends on its seed only.
Resampling is Pillow's (bilinear image, nearest label) where mmseg used OpenCV's. Normalising
(SEG_MEAN, SEG_STD) is left to the device.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# the UNIP paper's fine-tuning mean and std of [0, 1] pixels (NORM, what the device applies),
# and on the 0..255 scale
NORM = (0.3801, 0.1878)
SEG_MEAN = NORM[0] * 255
SEG_STD = NORM[1] * 255
SCALE = (2048, 512)
RATIO_RANGE = (0.5, 2.0)
IGNORE = 255


def rescaled_size(w: int, h: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's `rescale_size`: the largest keep-ratio size within (long, short) = scale."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if (a.shape[1], a.shape[0]) == size:
        return a
    return np.asarray(Image.fromarray(a).resize(size, resample))


def rescale(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[int, int] = SCALE,
    ratio_range: tuple[float, float] = RATIO_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg `Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)`.

    The target scale is int(scale * r) for r ~ U(ratio_range), as mmseg truncates it; the
    image is resized bilinearly, the label by nearest neighbour (no new ids appear).
    """
    r = rng.random() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    target = (int(scale[0] * r), int(scale[1] * r))
    size = rescaled_size(image.shape[1], image.shape[0], target)
    return (
        _resize(image, size, Image.Resampling.BILINEAR),
        _resize(label, size, Image.Resampling.NEAREST),
    )


def test_resize(image: np.ndarray, scale: tuple[int, int] = SCALE) -> np.ndarray:
    """mmseg's test-time `Resize(img_scale=scale, keep_ratio=True)` of the image alone."""
    size = rescaled_size(image.shape[1], image.shape[0], scale)
    return _resize(image, size, Image.Resampling.BILINEAR)


test_resize.__test__ = False  # a transform, not a pytest test


def crop_offset(rng: np.random.Generator, h: int, w: int, crop: int) -> tuple[int, int]:
    """mmseg `RandomCrop.get_crop_bbox`: top then left, uniform over the valid offsets."""
    top = int(rng.integers(0, max(h - crop, 0) + 1))
    left = int(rng.integers(0, max(w - crop, 0) + 1))
    return top, left


def balanced(label: np.ndarray, cat_max_ratio: float, ignore_index: int = IGNORE) -> bool:
    """More than one labelled class, none covering cat_max_ratio of the labelled pixels."""
    ids, counts = np.unique(label, return_counts=True)
    counts = counts[ids != ignore_index]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop: int = 512,
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg `RandomCrop(crop_size=(crop, crop), cat_max_ratio=...)`.

    Up to 10 crops are checked with `balanced`; after each rejected one a new box is drawn,
    so when all 10 fail the crop kept is the 11th draw, unchecked, exactly as mmseg does.
    """
    h, w = label.shape
    top, left = crop_offset(rng, h, w, crop)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            if balanced(label[top : top + crop, left : left + crop], cat_max_ratio, ignore_index):
                break
            top, left = crop_offset(rng, h, w, crop)
    box = (slice(top, top + crop), slice(left, left + crop))
    return image[box].copy(), label[box].copy()


def flip(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, p: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg `RandomFlip(prob=p)`, horizontal: image and label together."""
    if rng.random() < p:
        return image[:, ::-1].copy(), label[:, ::-1].copy()
    return image, label


def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg: float32, clip, then astype(uint8), which truncates
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _contrast(image: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    if rng.integers(2):
        return _convert(image, alpha=rng.uniform(lo, hi))
    return image


def photometric(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
) -> np.ndarray:
    """mmseg `PhotoMetricDistortion` as it acts on a gray image.

    Brightness (p 0.5, +U(-delta, delta)), then contrast (p 0.5, *U(range)) either before or
    after the colour steps (mode drawn as in mmseg). Saturation scales HSV's S, which is 0 on
    a gray image, and hue rotates H, which then has no effect: both are the identity here, so
    they are skipped and draw nothing.
    """
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    rng.integers(2)  # mmseg's mode: contrast before or after saturation and hue, same here
    return _contrast(image, rng, *contrast_range)


def pad(
    image: np.ndarray, label: np.ndarray, crop: int = 512, ignore_index: int = IGNORE
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg `Pad(size=(crop, crop), pad_val=0, seg_pad_val=ignore_index)`: bottom and right."""
    h, w = image.shape
    widths = ((0, max(crop - h, 0)), (0, max(crop - w, 0)))
    return (
        np.pad(image, widths, constant_values=0),
        np.pad(label, widths, constant_values=ignore_index),
    )


def train_transform(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop: int = 512,
    scale: tuple[int, int] = SCALE,
    ratio_range: tuple[float, float] = RATIO_RANGE,
    cat_max_ratio: float = 0.75,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The whole train pipeline: (crop, crop) uint8 image and label, and the (rows, cols) of
    the image before padding. mmseg pads after Normalize, so the padded pixels are 0 in the
    model's input: the caller zeroes them after normalising (finetune.zero_padding)."""
    image, label = rescale(image, label, rng, scale, ratio_range)
    image, label = random_crop(image, label, rng, crop, cat_max_ratio)
    image, label = flip(image, label, rng)
    image = photometric(image, rng)
    return (*pad(image, label, crop), image.shape)
