"""Whole-image and sliding-window segmentation inference, as mmsegmentation's EncoderDecoder.

`slide_logits` reproduces mmseg's `slide_inference` grid exactly: the last window is shifted
back to end at the border (never padded), an image smaller than the crop is one smaller window,
and overlapping logits are summed then divided by how many windows cover each pixel. No autograd
mode is forced: the caller wraps calls in `torch.inference_mode()` and calls `model.eval()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Model = Callable[[Tensor], Tensor]
Size = int | tuple[int, int]
Window = tuple[int, int, int, int]  # y1, y2, x1, x2


def _pair(v: Size, name: str) -> tuple[int, int]:
    h, w = (v, v) if isinstance(v, int) else v
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return h, w


def _spans(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's (start, end) along one axis: grid count, then shift the last window back."""
    grids = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(grids):
        end = min(i * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans


def window_grid(height: int, width: int, crop: Size = 512, stride: Size = 341) -> list[Window]:
    """Every sliding window as (y1, y2, x1, x2), row-major, in mmseg's order.

    All windows share one size, min(crop, image) per axis, which is what lets `slide_logits`
    batch them.
    """
    (ch, cw), (sh, sw) = _pair(crop, "crop"), _pair(stride, "stride")
    return [
        (y1, y2, x1, x2) for y1, y2 in _spans(height, ch, sh) for x1, x2 in _spans(width, cw, sw)
    ]


def _forward(model: Model, x: Tensor, size: tuple[int, int], num_classes: int) -> Tensor:
    """Logits of `x` resized to `size` (bilinear, align_corners=False, as mmseg's heads)."""
    logits = model(x)
    if logits.dim() != 4 or logits.shape[:2] != (x.shape[0], num_classes):
        raise ValueError(
            f"model must return (B, {num_classes}, h, w) logits for a batch of {x.shape[0]}, "
            f"got {tuple(logits.shape)}"
        )
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def _acc_dtype(image: Tensor) -> torch.dtype:
    # Sum in at least float32 even when the model runs in bf16/fp16 under autocast.
    return torch.promote_types(image.dtype, torch.float32)


def whole_logits(model: Model, image: Tensor, num_classes: int) -> Tensor:
    """One forward over the full (B, C, H, W) image; logits resized to (H, W)."""
    size = (image.shape[-2], image.shape[-1])
    return _forward(model, image, size, num_classes).to(_acc_dtype(image))


def slide_logits(
    model: Model,
    image: Tensor,
    num_classes: int,
    crop: Size = 512,
    stride: Size = 341,
    batch_windows: int = 1,
) -> Tensor:
    """(B, K, H, W) logits averaged over mmseg's overlapping windows.

    Args:
        model: maps (n, C, h, w) to (n, K, h', w') logits at any resolution.
        image: (B, C, H, W), already normalised.
        num_classes: K, checked against the model's output.
        crop: window size (int or (h, w)).
        stride: step between window starts (int or (h, w)).
        batch_windows: windows per forward (each window is the whole batch, so the model sees
            B * batch_windows crops). A speed lever only: results are added back in the same
            order, so the output does not change (given a model whose per-sample output does
            not depend on the batch, i.e. in eval mode).
    """
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    b, _, h, w = image.shape
    windows = window_grid(h, w, crop, stride)
    dtype = _acc_dtype(image)
    total = image.new_zeros((b, num_classes, h, w), dtype=dtype)
    count = image.new_zeros((1, 1, h, w), dtype=dtype)
    for i in range(0, len(windows), batch_windows):
        chunk = windows[i : i + batch_windows]
        crops = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        size = (crops.shape[-2], crops.shape[-1])
        out = _forward(model, crops, size, num_classes).to(dtype)
        for (y1, y2, x1, x2), part in zip(chunk, out.split(b), strict=True):
            total[:, :, y1:y2, x1:x2] += part
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


def predict(
    model: Model,
    image: Tensor,
    num_classes: int,
    mode: Literal["slide", "whole"] = "slide",
    crop: Size = 512,
    stride: Size = 341,
    out_size: tuple[int, int] | None = None,
    batch_windows: int = 1,
) -> Tensor:
    """(B, H, W) int64 class ids.

    Logits are resized to `out_size` (the label's original resolution, when the image was
    resized for the model) *before* the argmax, as mmseg's postprocess does: resizing ids
    afterwards would give a different, blockier map.
    """
    if mode == "slide":
        logits = slide_logits(model, image, num_classes, crop, stride, batch_windows)
    elif mode == "whole":
        logits = whole_logits(model, image, num_classes)
    else:
        raise ValueError(f"mode must be 'slide' or 'whole', got {mode!r}")
    if out_size is not None and tuple(out_size) != tuple(logits.shape[-2:]):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)
