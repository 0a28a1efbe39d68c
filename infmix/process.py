"""One sample, start to finish: read -> decode -> grayscale -> crop/filter/resize -> encode.

Returns either stored bytes with their metadata or a rejection; it never raises for bad input.
An 8-bit grayscale JPEG that needs no change is stored byte for byte (no re-encode loss, no
encode time); it is still fully decoded once, which both validates it and gives the pixel
hash used by exact deduplication.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from infmix.config import ProcessConfig
from infmix.dedup.descriptor import thumb_descriptor
from infmix.sample import Sample
from infmix.steps.decode import Rejected, decode
from infmix.steps.encode import EXTENSIONS, encode
from infmix.steps.geometry import check_dark, crop, fit
from infmix.steps.normalise import to_gray


@dataclass
class SourceOptions:
    """The per-source options a worker needs (picklable, small)."""

    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    drop_dark_max: int | None = None


@dataclass
class Result:
    sample: Sample
    data: bytes = b""
    ext: str = ""
    meta: dict = field(default_factory=dict)
    pixel_hash: str = ""
    embedding: np.ndarray | None = None
    reason: str = ""
    detail: str = ""
    input_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.reason


def read_file(path: str, max_bytes: int) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise Rejected("too_large", f"{size} bytes is over max_file_bytes={max_bytes}")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Rejected("unreadable", f"{type(e).__name__}: {e.strerror or e}") from None


def process_sample(
    sample: Sample, opts: SourceOptions, cfg: ProcessConfig, embed: bool = False
) -> Result:
    """`embed`: also compute the built-in near-duplicate descriptor from the final image,
    while it is decoded anyway."""
    t0 = time.perf_counter()
    res = Result(sample)
    try:
        data = read_file(sample.path, cfg.max_file_bytes)
        res.input_bytes = len(data)
        final = _convert(data, res, opts, cfg)
        if embed:
            res.embedding = thumb_descriptor(final)
    except Rejected as e:
        res.reason, res.detail = e.reason, e.detail
    except Exception as e:  # a bug or an exotic file must not stop the build
        res.reason, res.detail = "error", f"{type(e).__name__}: {e}"
    res.seconds = time.perf_counter() - t0
    return res


def _convert(data: bytes, res: Result, opts: SourceOptions, cfg: ProcessConfig) -> Image.Image:
    cropping = any(opts.crop)
    dec = decode(data, cfg.max_pixels, cfg.max_side, allow_reduce=not cropping)
    gray, conversion = to_gray(dec.image, cfg.percentiles)
    if dec.drafted:
        conversion = {"method": "jpeg_luma_plane", "jpeg_scaled_to": list(dec.image.size)}
    gray = crop(gray, opts.crop)
    check_dark(gray, opts.drop_dark_max)
    final = fit(gray, cfg.max_side)
    pixels = final.tobytes()
    res.pixel_hash = hashlib.sha256(f"{final.size}".encode() + pixels).hexdigest()
    unchanged = (
        dec.format == "JPEG"
        and dec.mode == "L"
        and not dec.oriented
        and not dec.drafted
        and not cropping
        and final is gray
        and conversion["method"] == "none"
    )
    if cfg.passthrough and cfg.format == "jpeg" and unchanged:
        res.data, conversion = data, {"method": "passthrough"}
    else:
        res.data = encode(final, cfg.format, cfg.jpeg_quality)
    res.ext = EXTENSIONS[cfg.format]
    if cropping:
        conversion["crop"] = list(opts.crop)
    if dec.oriented:
        conversion["exif_oriented"] = True
    res.meta = _meta(res, dec, final.size, conversion)
    return final


def _meta(res: Result, dec, size: tuple[int, int], conversion: dict) -> dict:
    s = res.sample
    meta = {
        "key": s.key,
        "source": s.source,
        "modality": s.modality,
        "path": s.relpath,
        "width": size[0],
        "height": size[1],
        "original": {
            "width": dec.width,
            "height": dec.height,
            "mode": dec.mode,
            "bit_depth": dec.bit_depth,
            "format": dec.format,
        },
        "conversion": conversion,
        "sha256": hashlib.sha256(res.data).hexdigest(),
    }
    if s.pair:
        meta["pair_path"] = s.pair
    return meta
