"""Read WebDataset tar shards straight from their 512-byte headers.

`tarfile` builds a TarInfo per member through several layers of Python, which cost as much as
a fifth of the loader's time per image. This reads only the fields the format defines (ustar
name and prefix, size in octal or base-256, type, PAX `path`/`size` records, GNU long names),
checks every header's checksum as tarfile does, and seeks past members nobody asked for.
Links, directories and devices are skipped, as webdataset skips them. Members are grouped into
samples exactly as webdataset's `group_by_keys` groups them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

BLOCK = 512
_END = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular and contiguous files (GNU sparse ones: skipped)
_META = (b"x", b"g", b"L", b"K")  # PAX local/global records, GNU long name / long link name
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")
_POSIX_MAGIC = b"ustar\x0000"
_SIGNED = struct.Struct("148b8x356b")  # header bytes as signed chars, checksum field left out
# webdataset's base_plus_ext: the key is the path up to the first dot of its last component
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class TarError(ValueError):
    """A shard that cannot be read on: a damaged header or a truncated member. The last arg
    is the shard's path (what webdataset passes its handlers)."""


def _number(field: bytes) -> int:
    """tarfile's nti: base-256 when the first byte has its high bit set, else octal."""
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[:1] == b"\xff" else n
    text = field.split(b"\0", 1)[0].strip()
    return int(text or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _check(h: bytes) -> None:
    """The header checksum, counted unsigned or signed (both forms exist in the wild)."""
    try:
        stored = _number(h[148:156])
    except ValueError:
        raise TarError("bad header checksum field") from None
    unsigned = sum(h) - sum(h[148:156]) + 8 * 32  # the checksum field counts as spaces
    if stored != unsigned and stored != sum(_SIGNED.unpack(h)) + 8 * 32:
        raise TarError("header checksum mismatch (damaged shard)")


def _pax(data: bytes) -> dict[str, str]:
    """PAX extended-header records `"<len> <key>=<value>\\n"`."""
    out, pos = {}, 0
    while pos < len(data) and data[pos : pos + 1] not in (b"\0", b""):
        space = data.find(b" ", pos)
        if space < 0:
            raise TarError("bad PAX record")
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise TarError("bad PAX record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _read(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) < size:
        raise TarError("member truncated (shard cut short)")
    f.seek(-size % BLOCK, 1)
    return data


def members(f: BinaryIO, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of each regular file, data None when `want(name)` is false (not read)."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    start = f.tell()
    end = f.seek(0, 2)  # a claimed size past the end is damage, not an allocation
    f.seek(start)
    while True:
        h = f.read(BLOCK)
        if not h or h == _END:
            return
        if len(h) < BLOCK:
            raise TarError("header truncated (shard cut short)")
        _check(h)
        kind, size = h[156:157], _number(h[124:136])
        if kind not in _META and "size" in pax:  # PAX: sizes past 8 GiB
            size = int(pax["size"])
        if not 0 <= size <= end - f.tell():
            raise TarError(f"member of {size} bytes truncated: past the shard's end (or damaged)")
        if kind in _META:  # metadata for the next member (global and link names: ignored)
            data = _read(f, size)
            if kind == b"x":
                pax = _pax(data)
            elif kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        name = pax.get("path") or long_name or _text(h[:100])
        if "path" not in pax and long_name is None and h[257:265] == _POSIX_MAGIC:
            prefix = _text(h[345:500])
            name = f"{prefix}/{name}" if prefix else name
        pax, long_name = {}, None
        if kind in _REGULAR and not (kind == b"\0" and name.endswith("/")):
            if want(name):
                yield name, _read(f, size)
                continue
            yield name, None
        elif kind in _NO_DATA:  # as tarfile: links, devices, folders, fifos store no data
            continue
        f.seek(size + (-size % BLOCK), 1)


def samples(
    path: Path,
    want: Callable[[str], bool],
    on_error: Callable[[Exception], bool],
) -> Iterator[dict]:
    """webdataset samples ({"__key__", "__url__", ext: bytes}) of the members `want` keeps,
    consecutive members with one key making one sample. An unreadable shard goes to
    `on_error` (True: skip the rest of it and go on; False: raise)."""
    current: dict = {}
    try:
        with open(path, "rb") as f:
            for name, data in members(f, want):
                if data is None:
                    continue
                m = _KEY.match(name)
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if current and (current["__key__"] != key or ext in current):
                    yield current
                    current = {}
                if not current:
                    current = {"__key__": key, "__url__": str(path)}
                current[ext] = data
    except (OSError, TarError, ValueError) as exn:
        exn.args = (*exn.args, str(path))
        if not on_error(exn):
            raise
    if current:
        yield current
