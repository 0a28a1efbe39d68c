"""Encoding of the final grayscale image; fixed options so bytes are reproducible."""

from __future__ import annotations

import io

from PIL import Image

EXTENSIONS = {"jpeg": "jpg", "png": "png"}


def encode(im: Image.Image, fmt: str, quality: int) -> bytes:
    # Pillow copies comments, ICC profiles and transparency from `info` into the output:
    # none of the source's metadata goes into the corpus (an RGB profile on an L image is
    # invalid anyway)
    im.info = {}
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    else:
        im.save(buf, "PNG", compress_level=6)
    return buf.getvalue()
