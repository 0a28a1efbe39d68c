"""Safe decoding: size caps before pixels are touched, and decoding only what is needed.

Colour JPEGs are decoded straight to their luma plane by libjpeg (Pillow's `draft`), and at a
reduced DCT scale when the image will be shrunk anyway: both skip most of the decode work.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

_ORIENTATION = 0x0112
# Pillow would otherwise sniff any format it knows whatever the extension, EPS (Ghostscript)
# and PDF included: only plain raster formats are ever decoded
FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


class Rejected(Exception):
    """A per-sample failure: recorded in rejected.jsonl with `reason`, never raised further."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    image: Image.Image
    format: str
    width: int  # size as stored in the file, before orientation or draft
    height: int
    mode: str  # mode as stored in the file
    bit_depth: int
    oriented: bool  # an EXIF orientation was applied
    drafted: bool  # libjpeg decoded the luma plane only (and maybe at reduced scale)


def bit_depth(mode: str) -> int:
    return _BIT_DEPTH.get(mode, 8)


def _target_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (no pixels decoded); raise `Rejected` for anything unusable."""
    if not data:
        raise Rejected("empty_file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as e:
            raise Rejected("too_large", str(e)) from None
        except MemoryError:
            raise
        except Image.UnidentifiedImageError:
            raise Rejected("not_an_image", "no image format recognised") from None
        except Exception as e:  # Pillow raises many types for junk headers
            raise Rejected("not_an_image", f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise Rejected("too_large", f"{w}x{h} is over max_pixels={max_pixels}")
    if w < 1 or h < 1:
        raise Rejected("corrupt", f"image size {w}x{h}")
    return im


def decode(
    data: bytes, max_pixels: int, max_side: int | None = None, allow_reduce: bool = True
) -> Decoded:
    """Decode `data` honouring EXIF orientation; raise `Rejected` for anything unusable."""
    return load(open_image(data, max_pixels), max_side, allow_reduce)


def load(im: Image.Image, max_side: int | None = None, allow_reduce: bool = True) -> Decoded:
    """Decode the pixels of an image from `open_image`."""
    w, h = im.size
    fmt, mode = im.format or "", im.mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drafted = False
        if fmt == "JPEG" and mode in ("RGB", "YCbCr", "L"):
            tw, th = _target_size(w, h, max_side) if allow_reduce else (w, h)
            drafted = im.draft("L", (tw, th)) is not None and (mode != "L" or (tw, th) != (w, h))
        try:
            im.load()
        except MemoryError:
            raise
        except Exception as e:
            raise Rejected("corrupt", f"{type(e).__name__}: {e}") from None
        orientation = orientation_tag(im)
        if orientation not in (0, 1):
            im = ImageOps.exif_transpose(im)
    return Decoded(im, fmt, w, h, mode, bit_depth(mode), orientation not in (0, 1), drafted)


def orientation_tag(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # a broken EXIF block does not make a broken image
        return 1
