"""Exact duplicates: byte-identical stored images (the `sha256` of each sample's json).

Re-encoded images are encoded with fixed options, so the same final pixels always give the
same bytes; passed-through JPEGs are compared by their stream with the metadata stripped, so
copies that differ only in EXIF, comments or trailing bytes are duplicates. Hashing what is
stored needs no pixels, so passed-through JPEGs need not be decoded. Two different JPEG streams
of the same pixels (a lossless re-optimisation) are left to the near-duplicate stage, where
they meet at similarity 1.

The first record in plan order is kept, so the choice is the same on every run. As in the
near-duplicate stage, only images of the same modality are compared: an RGB photo never
removes a thermal frame, even one with identical pixels.
"""

from __future__ import annotations


def exact_duplicates(records: list[dict]) -> tuple[list[dict], list[dict]]:
    first: dict[str, str] = {}
    kept, dropped = [], []
    for rec in records:
        h = (rec["meta"]["modality"], rec["meta"]["sha256"])
        if h in first:
            dropped.append(
                {
                    **rec,
                    "reason": "exact_duplicate",
                    "duplicate_of": first[h],
                    "detail": f"same stored image as {first[h]}",
                }
            )
        else:
            first[h] = rec["key"]
            kept.append(rec)
    return kept, dropped
