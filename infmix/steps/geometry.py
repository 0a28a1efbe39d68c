"""Border crop, near-black filter and downscale of an 8-bit grayscale image."""

from __future__ import annotations

from PIL import Image

from infmix.steps.decode import Rejected


def crop(im: Image.Image, border: tuple[int, int, int, int]) -> Image.Image:
    """Drop (top, right, bottom, left) border pixels; DroneVehicle has a 100 px white frame."""
    top, right, bottom, left = border
    if not any(border):
        return im
    w, h = im.size
    if left + right >= w or top + bottom >= h:
        raise Rejected("crop_too_large", f"crop {list(border)} leaves nothing of {w}x{h}")
    return im.crop((left, top, w - right, h - bottom))


def check_dark(im: Image.Image, max_value: int | None) -> None:
    """Reject frames whose brightest pixel is at or below `max_value` (SCUT FIR filter)."""
    if max_value is not None:
        brightest = im.getextrema()[1]
        if brightest <= max_value:
            raise Rejected("dark_frame", f"max grey {brightest} <= {max_value}")


def fit(im: Image.Image, max_side: int | None) -> Image.Image:
    """Downscale so the longer side is at most `max_side` (antialiased); never upscale."""
    w, h = im.size
    if max_side is None or max(w, h) <= max_side:
        return im
    s = max_side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
