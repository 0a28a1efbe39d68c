"""Lossless metadata stripping and structural checks for passed-through JPEGs.

Stored bytes must not carry what the corpus should not: EXIF (GPS, camera serials), XMP,
comments, or data appended after the image. Segments are filtered at the marker level, no
entropy decoding, so the pixels are exactly those of the original file. The JFIF header is
replaced by the plain one Pillow writes (density is irrelevant to a grayscale stream), so
copies that differ only in metadata store the same bytes. Anything unexpected returns None and
the caller decodes and re-encodes instead.

`plain_gray` decides whether a stripped stream may be stored without being decoded. It checks
every header the way libjpeg reads it (frame, quantisation and Huffman tables, scan
parameters, progression) and accepts only the plainest case: one 8-bit Huffman-coded
component whose tables are all defined before they are used. Any doubt sends the image to a
full decode, which rejects what libjpeg cannot read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEEP = {0xDB, 0xC4, 0xDD, 0xCC, 0xEE}  # DQT, DHT, DRI, DAC, APP14 (Adobe colour transform)
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SEQUENTIAL, _PROGRESSIVE = {0xC0, 0xC1}, 0xC2  # Huffman-coded frames
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # not stuffing, not RSTn, not fill
JFIF = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"  # as Pillow writes it


@dataclass(frozen=True)
class Stripped:
    data: bytes
    segments: tuple[tuple[int, bytes], ...]  # (marker, payload) of the kept headers, in order
    scan_bytes: tuple[int, ...]  # entropy-coded bytes after each SOS


def strip_jpeg(data: bytes) -> Stripped | None:
    """The JPEG with only the segments decoding needs, ending at EOI; None if malformed."""
    if data[:2] != b"\xff\xd8":
        return None
    out, pos, n = [b"\xff\xd8", JFIF], 2, len(data)
    segments: list[tuple[int, bytes]] = []
    scans: list[int] = []
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            return Stripped(b"".join(out), tuple(segments), tuple(scans))
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if pos + 4 > n or length < 2 or end > n:
            return None
        if marker == 0xDA:  # SOS: header, then entropy-coded data up to the next marker
            m = _NEXT_MARKER.search(data, end)
            if m is None:
                return None
            segments.append((marker, data[pos + 4 : end]))
            scans.append(m.start() - end)
            out.append(data[pos : m.start()])
            pos = m.start()
            continue
        if marker in _KEEP or marker in _SOF:
            segments.append((marker, data[pos + 4 : end]))
            out.append(data[pos:end])
        elif not (0xE0 <= marker <= 0xEF or marker == 0xFE):  # only APPn and COM are dropped
            return None
        pos = end
    return None


def plain_gray(s: Stripped, width: int, height: int) -> bool:
    """Whether every header is one libjpeg reads without complaint, for a single 8-bit
    Huffman-coded component of this size; see the module docstring."""
    try:
        return _Checker(width, height).run(s)
    except (IndexError, ValueError):  # a segment shorter than its fields
        return False


class _Checker:
    def __init__(self, width: int, height: int):
        self.size = (width, height)
        self.frame: int | None = None  # SOF marker
        self.component: tuple[int, int] | None = None  # (id, quantisation table)
        self.qt: set[int] = set()
        self.ht: set[tuple[int, int]] = set()  # (class 0 DC / 1 AC, id)
        self.bits = [-1] * 64  # progressive: successive-approximation bit of each coefficient

    def run(self, s: Stripped) -> bool:
        if not s.scan_bytes or 0 in s.scan_bytes:
            return False
        for marker, p in s.segments:
            ok = {0xDB: self.dqt, 0xC4: self.dht, 0xDA: self.sos}.get(marker, self.other)(marker, p)
            if not ok:
                return False
        sequential = self.frame in _SEQUENTIAL
        return self.frame is not None and (not sequential or len(s.scan_bytes) == 1)

    def other(self, marker: int, p: bytes) -> bool:
        if marker in _SOF:
            return self.sof(marker, p)
        if marker == 0xDD:  # DRI
            return len(p) == 2
        return marker == 0xEE  # APP14 is harmless for one component; DAC means arithmetic

    def sof(self, marker: int, p: bytes) -> bool:
        if self.frame is not None or marker not in _SEQUENTIAL | {_PROGRESSIVE}:
            return False
        bits, h, w, comps = p[0], int.from_bytes(p[1:3], "big"), int.from_bytes(p[3:5], "big"), p[5]
        if bits != 8 or comps != 1 or len(p) != 9 or (w, h) != self.size:
            return False
        cid, sampling, tq = p[6], p[7], p[8]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 15 <= 4) or tq > 3:
            return False
        self.frame, self.component = marker, (cid, tq)
        return True

    def dqt(self, _marker: int, p: bytes) -> bool:
        i = 0
        while i < len(p):
            precision, tq = p[i] >> 4, p[i] & 15
            size = 64 * (precision + 1)
            if precision > 1 or tq > 3 or i + 1 + size > len(p):
                return False
            i += 1 + size
            self.qt.add(tq)
        return len(p) > 0

    def dht(self, _marker: int, p: bytes) -> bool:
        i = 0
        while i < len(p):
            tc, th = p[i] >> 4, p[i] & 15
            counts = p[i + 1 : i + 17]
            if tc > 1 or th > 3 or len(counts) != 16:
                return False
            total = sum(counts)
            values = p[i + 17 : i + 17 + total]
            if total > 256 or len(values) != total or (tc == 0 and max(values, default=0) > 15):
                return False
            code = 0  # libjpeg's check: the codes of each length fit, the all-ones code unused
            for length, count in enumerate(counts, 1):
                code += count
                if code >= 1 << length:
                    return False
                code <<= 1
            self.ht.add((tc, th))
            i += 17 + total
        return len(p) > 0

    def _table(self, cls: int, tid: int) -> bool:
        # for sequential frames, libjpeg fills in the standard tables 0 and 1 when a stream
        # defines none (MJPEG)
        std = self.frame in _SEQUENTIAL and tid <= 1 and not self.ht
        return (cls, tid) in self.ht or std

    def sos(self, _marker: int, p: bytes) -> bool:
        if self.frame is None or self.component[1] not in self.qt:
            return False
        if p[0] != 1 or len(p) != 6 or p[1] != self.component[0]:
            return False
        td, ta = p[2] >> 4, p[2] & 15
        ss, se, ah, al = p[3], p[4], p[5] >> 4, p[5] & 15
        if self.frame in _SEQUENTIAL:
            limit = 1 if self.frame == 0xC0 else 3
            return (
                (ss, se, ah, al) == (0, 63, 0, 0)
                and td <= limit
                and ta <= limit
                and self._table(0, td)
                and self._table(1, ta)
            )
        dc = ss == 0
        if (dc and se != 0) or (not dc and not ss <= se <= 63) or al > 13:
            return False
        if ah and al != ah - 1:
            return False
        if any(self.bits[k] != (ah if ah else -1) for k in range(ss, se + 1)):
            return False  # out of order: libjpeg only warns, but that is not plain
        if not dc and self.bits[0] < 0:
            return False  # AC before DC
        for k in range(ss, se + 1):
            self.bits[k] = al
        if dc:
            return ah > 0 or (td <= 3 and self._table(0, td))
        return ta <= 3 and self._table(1, ta)  # AC refinement is Huffman-coded too
