"""Duplicate removal between processing and sharding.

Each stage is a function `(records, cfg) -> (kept, dropped)` over the processed records in
plan order; `dropped` records carry `reason` and `duplicate_of`. Stages run in order and the
result is committed as one file, so the near-duplicate stage only has to be appended here.
"""

from __future__ import annotations

from collections.abc import Callable

from infmix.config import BuildConfig
from infmix.dedup.exact import exact_duplicates

Stage = Callable[[list[dict], BuildConfig], tuple[list[dict], list[dict]]]


def stages(cfg: BuildConfig) -> list[tuple[str, Stage]]:
    out: list[tuple[str, Stage]] = []
    if cfg.dedup.exact:
        out.append(("exact", exact_duplicates))
    return out


def deduplicate(records: list[dict], cfg: BuildConfig) -> tuple[list[dict], list[dict]]:
    """Run every enabled stage; returns (kept, dropped) with plan order kept in both."""
    dropped: list[dict] = []
    for _name, stage in stages(cfg):
        records, gone = stage(records, cfg)
        dropped += gone
    return records, dropped
