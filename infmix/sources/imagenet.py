"""`imagenet`: class folders; the first `per_class` images of each in sorted file-name order.

A plain directory listing is in file-system order, so "the first 200" would differ between
machines; sorting makes the subset the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

from infmix.config import ImageNetSource
from infmix.sources.listing import _sorted_entries, images_in


def list_imagenet(src: ImageNetSource, root: Path) -> list[str]:
    classes, _ = _sorted_entries(root)
    out: list[str] = []
    for cls in sorted(classes):
        _, files = _sorted_entries(root / cls)
        out += images_in(Path(cls), sorted(files), src)[: src.per_class]
    return out
