"""Lossless metadata stripping for passed-through JPEGs.

Stored bytes must not carry what the corpus should not: EXIF (GPS, camera serials), XMP,
comments, or data appended after the image. Segments are filtered at the marker level, no
entropy decoding, so the pixels are exactly those of the original file. Anything unexpected
returns None and the caller re-encodes instead. A plain JPEG (JFIF header, tables, scans)
comes out byte for byte.
"""

from __future__ import annotations

import re

_KEEP = {0xDB, 0xC4, 0xDD, 0xCC, 0xEE}  # DQT, DHT, DRI, DAC, APP14 (Adobe colour transform)
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # not stuffing, not RSTn, not fill


def strip_jpeg(data: bytes) -> bytes | None:
    """The JPEG with only the segments decoding needs, ending at EOI; None if malformed."""
    if data[:2] != b"\xff\xd8":
        return None
    out, pos, n = [b"\xff\xd8"], 2, len(data)
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            return b"".join(out)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if pos + 4 > n or length < 2 or end > n:
            return None
        if marker == 0xDA:  # SOS: header, then entropy-coded data up to the next marker
            m = _NEXT_MARKER.search(data, end)
            if m is None:
                return None
            out.append(data[pos : m.start()])
            pos = m.start()
            continue
        jfif = marker == 0xE0 and data[pos + 4 : pos + 9] == b"JFIF\x00"  # not JFXX thumbs
        if marker in _KEEP or marker in _SOF or jfif:
            out.append(data[pos:end])
        pos = end
    return None
