"""The dedup stages in order, over processed records in plan order.

Each stage returns the records it keeps and the ones it drops (with `reason` and
`duplicate_of`); the near stage also returns its clusters for duplicates.parquet. A new stage
is one more entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from infmix.config import BuildConfig
from infmix.dedup.exact import exact_duplicates


@dataclass
class DedupResult:
    kept: list[dict]
    dropped: list[dict] = field(default_factory=list)
    clusters: list[dict] = field(default_factory=list)  # one row per near-duplicate member


def deduplicate(records: list[dict], cfg: BuildConfig, work: Path, dim: int) -> DedupResult:
    result = DedupResult(records)
    if cfg.dedup.exact:
        result.kept, gone = exact_duplicates(result.kept)
        result.dropped += gone
    if cfg.dedup.near.enabled:
        from infmix.dedup.near import near_duplicates

        near = near_duplicates(result.kept, cfg.dedup.near, work, dim)
        result.kept, result.clusters = near.kept, near.clusters
        result.dropped += near.dropped
    return result
