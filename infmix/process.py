"""One sample, start to finish: read -> decode -> grayscale -> crop/filter/resize -> encode.

Returns either stored bytes with their metadata or a rejection; it never raises for bad input.
An 8-bit grayscale JPEG that needs no change is stored byte for byte, minus its metadata (no
re-encode loss, no encode time). When nothing needs its pixels it is not even decoded: its
header and marker structure are checked instead (`process.verify_passthrough` decodes it in
full). Every other input is decoded exactly once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from infmix.config import ProcessConfig
from infmix.dedup.descriptor import thumb_descriptor
from infmix.errors import InfmixError
from infmix.sample import Sample
from infmix.steps.decode import Decoded, Rejected, load, open_image, orientation_tag
from infmix.steps.encode import EXTENSIONS, encode
from infmix.steps.geometry import check_dark, crop, fit
from infmix.steps.jpeg import plain_gray, strip_jpeg
from infmix.steps.normalise import to_gray


class TransientError(InfmixError):
    """A failure of the machine rather than of the file; the build stops, a rerun retries."""


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
    embedding: np.ndarray | None = None
    reason: str = ""
    detail: str = ""
    input_bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.reason


# errors that say something about the file itself; any other OSError (EIO, ENOMEM, a network
# file system hiccup) may pass, so it stops the build instead of becoming a rejection
_PERMANENT = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.ELOOP,
    errno.EISDIR,
    errno.ENAMETOOLONG,
}


def read_file(path: str, max_bytes: int) -> bytes:
    """Read a regular file of at most `max_bytes`; FIFOs, devices and sockets are rejected
    unread (reading one could block forever or never end)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("not_a_file", "not a regular file (FIFO, device or socket)")
        if st.st_size > max_bytes:
            raise Rejected("too_large", f"{st.st_size} bytes is over max_file_bytes={max_bytes}")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        if e.errno not in _PERMANENT:
            raise
        raise Rejected("unreadable", f"{type(e).__name__}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise Rejected("too_large", f"grew past max_file_bytes={max_bytes} while read")
    return data


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
        final = _convert(data, res, opts, cfg, embed)
        if embed:  # `_convert` decodes whenever `embed` is set
            res.embedding = thumb_descriptor(final)
    except Rejected as e:
        res.reason, res.detail = e.reason, e.detail
    except MemoryError as e:
        # not a property of the file: stop here (the unit is not committed) and let a rerun
        # retry, rather than record a rejection that a fresh build would not make
        raise TransientError(f"{sample.path}: out of memory; rerun with fewer --workers") from e
    except OSError as e:
        if e.errno is None:  # Pillow's format errors are errno-less OSErrors
            res.reason, res.detail = "error", f"{type(e).__name__}: {e}"
        else:  # the system's (EIO, ENOSPC...): as above
            raise TransientError(f"{sample.path}: {type(e).__name__}: {e}") from e
    except Exception as e:  # a bug or an exotic file must not stop the build
        res.reason, res.detail = "error", f"{type(e).__name__}: {e}"
    res.seconds = time.perf_counter() - t0
    return res


def _convert(
    data: bytes, res: Result, opts: SourceOptions, cfg: ProcessConfig, embed: bool
) -> Image.Image | None:
    """Fill `res`; returns the final image, or None when the input was stored undecoded."""
    im = open_image(data, cfg.max_pixels)
    if _untouched(im, opts, cfg, embed) and _pass_through(data, im, res):
        return None
    cropping = any(opts.crop)
    dec = load(im, cfg.max_side, allow_reduce=not cropping)
    gray, conversion = to_gray(dec.image, cfg.percentiles)
    if dec.drafted:
        conversion = {"method": "jpeg_luma_plane"}
    gray = crop(gray, opts.crop)
    check_dark(gray, opts.drop_dark_max)
    final = fit(gray, cfg.max_side)
    unchanged = (
        dec.format == "JPEG"
        and dec.mode == "L"
        and not dec.oriented
        and not dec.drafted
        and not cropping
        and final is gray
        and conversion["method"] == "none"
    )
    stripped = strip_jpeg(data) if cfg.passthrough and cfg.format == "jpeg" and unchanged else None
    if stripped is not None:  # same pixels, no metadata, no re-encode
        res.data, conversion = stripped.data, {"method": "passthrough"}
    else:
        res.data = encode(final, cfg.format, cfg.jpeg_quality)
    res.ext = EXTENSIONS[cfg.format]
    if cropping:
        conversion["crop"] = list(opts.crop)
    if dec.oriented:
        conversion["exif_oriented"] = True
    res.meta = _meta(res, dec, final.size, conversion)
    return final


def _untouched(im: Image.Image, opts: SourceOptions, cfg: ProcessConfig, embed: bool) -> bool:
    """From the header alone: an 8-bit grayscale JPEG that no step would change, and whose
    pixels nothing needs (no descriptor, no dark-frame check, no full verification)."""
    return (
        cfg.passthrough
        and cfg.format == "jpeg"
        and not cfg.verify_passthrough
        and not embed
        and opts.drop_dark_max is None
        and not any(opts.crop)
        and im.format == "JPEG"
        and im.mode == "L"
        and (cfg.max_side is None or max(im.size) <= cfg.max_side)
        and orientation_tag(im) in (0, 1)
    )


def _pass_through(data: bytes, im: Image.Image, res: Result) -> bool:
    """Store the stripped stream without decoding it, if its structure is plain (see
    steps/jpeg.py); anything less usual is decoded, which checks it in full."""
    stripped = strip_jpeg(data)
    w, h = im.size
    if stripped is None or not plain_gray(stripped, w, h):
        return False
    res.data, res.ext = stripped.data, EXTENSIONS["jpeg"]
    dec = Decoded(im, "JPEG", w, h, "L", 8, oriented=False, drafted=False)
    res.meta = _meta(res, dec, (w, h), {"method": "passthrough"})
    return True


# Every sample's json has every field, typed the same way in all of them: readers that infer
# one schema from the first rows (Hugging Face `datasets` does) then read every row. `low` and
# `high` are the input values mapped linearly to 0 and 255 (the stretch's percentile values,
# 0 and 255 for 8-bit inputs).
CONVERSION_FIELDS = {
    "method": "",
    "low": 0.0,
    "high": 255.0,
    "crop": [0, 0, 0, 0],
    "via": "",
    "exif_oriented": False,
}


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
        "conversion": {**CONVERSION_FIELDS, **conversion},
        "sha256": hashlib.sha256(res.data).hexdigest(),
        "pair_path": s.pair or "",
    }
    return meta
