"""Planning: every enabled source listed into one sorted list of `Sample`s.

The plan is ordered by source name, then by a depth-first walk in natural name order (each
folder's files before its sub-folders), so it is the same on every machine and worker count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from infmix.config import BuildConfig
from infmix.sample import Sample, display_path, unique_keys
from infmix.sources.folder import list_folder
from infmix.sources.imagenet import list_imagenet
from infmix.sources.paired import list_paired, visible_partner
from infmix.sources.video import list_video

LISTERS: dict[str, Callable] = {
    "folder": list_folder,
    "video": list_video,
    "imagenet": list_imagenet,
    "paired": list_paired,
}


def plan_source(cfg: BuildConfig, src) -> list[Sample]:
    root = cfg.source_root(src)
    relpaths = LISTERS[src.kind](src, root)
    keys = unique_keys(src.name, relpaths)
    pairs = [visible_partner(src, root, r) if src.kind == "paired" else None for r in relpaths]
    return [
        Sample(
            k,
            src.name,
            src.modality,
            str(root / Path(r)),
            display_path(r),
            display_path(pair) if pair else None,
        )
        for k, r, pair in zip(keys, relpaths, pairs, strict=True)
    ]


def plan(cfg: BuildConfig) -> list[Sample]:
    """All samples of all enabled sources, sorted by (source name, listing order)."""
    out: list[Sample] = []
    for src in sorted(cfg.enabled_sources(), key=lambda s: s.name):
        out += plan_source(cfg, src)
    return out
