"""The unit of work: one planned input file, with a key that is stable across runs.

Keys are made from the source name and the relative path only, so the same files always get
the same keys, whatever the machine or the worker count. WebDataset splits a member name at its
first dot, so keys hold no dot; they never start with an underscore either.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Sample:
    key: str
    source: str
    modality: str
    path: str  # absolute path of the input file
    relpath: str  # path relative to the source root, with forward slashes
    pair: str | None = None  # visible partner of a thermal image (paired sources)

    def to_dict(self) -> dict:
        return asdict(self)


MAX_KEY = 160


def make_key(source: str, relpath: str) -> str:
    """`llvip`, `infrared/train/010001.jpg` -> `llvip__infrared__train__010001_jpg`.

    Very long keys are cut and given a hash of the full path, so tar member names stay short.
    """
    parts = [_UNSAFE.sub("_", p) for p in relpath.split("/")]
    key = "__".join([source, *parts])
    if len(key) > MAX_KEY:
        digest = hashlib.sha1(relpath.encode(errors="surrogateescape")).hexdigest()[:8]
        key = f"{key[: MAX_KEY - 9]}-{digest}"
    return key


def display_path(path: str) -> str:
    """A path as valid UTF-8 text: undecodable bytes of a file name become backslash escapes
    (they would break json readers and parquet writers downstream)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def unique_keys(source: str, relpaths: list[str]) -> list[str]:
    """Keys for one source; paths that collide after sanitising get a short path hash."""
    keys = [make_key(source, r) for r in relpaths]
    seen: dict[str, int] = {}
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
    return [
        f"{k}-{hashlib.sha1(r.encode(errors='surrogateescape')).hexdigest()[:8]}"
        if seen[k] > 1
        else k
        for k, r in zip(keys, relpaths, strict=True)
    ]


def natural_key(name: str) -> tuple:
    """Sort key that puts frame_2 before frame_10 (sequence order of unpadded frame numbers)."""
    # isdecimal, not isdigit: "²" is a digit that int() refuses and \d does not match
    parts = tuple(int(t) if t.isdecimal() else t for t in _DIGITS.split(name))
    return (parts, name)  # the name breaks ties such as 1.jpg / 01.jpg
