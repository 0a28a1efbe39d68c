"""Lossless metadata stripping and structural checks for passed-through JPEGs.

Stored bytes must not carry what the corpus should not: EXIF (GPS, camera serials), XMP,
comments, or data appended after the image. Segments are filtered at the marker level, no
entropy decoding, so the pixels are exactly those of the original file. Anything unexpected
returns None and the caller decodes and re-encodes instead. A plain JPEG (JFIF header, tables,
scans) comes out byte for byte.

`plain_gray` says whether a stripped stream is one that every JPEG reader decodes: one 8-bit
component, Huffman-coded (baseline, extended or progressive), one frame, tables before the
first scan, entropy-coded data in every scan, and an EOI. That is what a build checks instead
of decoding a JPEG it passes through untouched (see process.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEEP = {0xDB, 0xC4, 0xDD, 0xCC, 0xEE}  # DQT, DHT, DRI, DAC, APP14 (Adobe colour transform)
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HUFFMAN_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # not stuffing, not RSTn, not fill


@dataclass(frozen=True)
class Stripped:
    data: bytes
    frames: tuple[tuple[int, int, int, int, int], ...]  # (marker, bits, height, width, comps)
    scans: int  # SOS segments
    empty_scans: int  # scans with no entropy-coded byte
    tables_before_scan: bool  # a DQT came before the first SOS


def strip_jpeg(data: bytes) -> Stripped | None:
    """The JPEG with only the segments decoding needs, ending at EOI; None if malformed."""
    if data[:2] != b"\xff\xd8":
        return None
    out, pos, n = [b"\xff\xd8"], 2, len(data)
    frames: list[tuple[int, int, int, int, int]] = []
    scans = empty = 0
    dqt_first = False
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            return Stripped(b"".join(out), tuple(frames), scans, empty, dqt_first)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if pos + 4 > n or length < 2 or end > n:
            return None
        if marker == 0xDA:  # SOS: header, then entropy-coded data up to the next marker
            m = _NEXT_MARKER.search(data, end)
            if m is None:
                return None
            scans += 1
            empty += m.start() == end
            out.append(data[pos : m.start()])
            pos = m.start()
            continue
        if marker == 0xDB and not scans:
            dqt_first = True
        if marker in _SOF:
            if length < 8:
                return None
            seg = data[pos + 4 : end]
            h, w = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big")
            frames.append((marker, seg[0], h, w, seg[5]))
        jfif = marker == 0xE0 and data[pos + 4 : pos + 9] == b"JFIF\x00"  # not JFXX thumbs
        if marker in _KEEP or marker in _SOF or jfif:
            out.append(data[pos:end])
        pos = end
    return None


def plain_gray(s: Stripped, width: int, height: int) -> bool:
    """One 8-bit Huffman-coded component of this size, tables, and data in every scan."""
    if len(s.frames) != 1:
        return False
    marker, bits, h, w, comps = s.frames[0]
    return (
        marker in _HUFFMAN_SOF
        and bits == 8
        and comps == 1
        and (w, h) == (width, height)
        and s.scans >= 1
        and s.empty_scans == 0
        and s.tables_before_scan
    )
