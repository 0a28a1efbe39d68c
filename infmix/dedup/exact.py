"""Exact duplicates: the same decoded pixels (after conversion), whatever the file bytes.

The first record in plan order is kept, so the choice is the same on every run. As in the
near-duplicate stage, only images of the same modality are compared: an RGB photo never
removes a thermal frame, even one with identical pixels.
"""

from __future__ import annotations


def exact_duplicates(records: list[dict]) -> tuple[list[dict], list[dict]]:
    first: dict[str, str] = {}
    kept, dropped = [], []
    for rec in records:
        h = (rec["meta"]["modality"], rec["pixel_hash"])
        if h in first:
            dropped.append(
                {
                    **rec,
                    "reason": "exact_duplicate",
                    "duplicate_of": first[h],
                    "detail": f"same pixels as {first[h]}",
                }
            )
        else:
            first[h] = rec["key"]
            kept.append(rec)
    return kept, dropped
