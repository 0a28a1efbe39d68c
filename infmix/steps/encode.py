"""Encoding of the final grayscale image; fixed options so bytes are reproducible."""

from __future__ import annotations

import io

from PIL import Image

EXTENSIONS = {"jpeg": "jpg", "png": "png"}


def encode(im: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    else:
        im.save(buf, "PNG", compress_level=6)
    return buf.getvalue()
