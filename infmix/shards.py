"""Deterministic WebDataset tar shards and the `_info.json` that timm's reader reads.

Kept samples are shuffled with a seeded generator (so every shard mixes sources), packed
greedily under the sample and byte limits, and written with fixed member metadata (mtime 0,
uid/gid 0, no user names, mode 0644), image before json, so equal inputs give equal bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from infmix import atomic
from infmix.config import ShardConfig

BLOCK = 512
RECORD = tarfile.RECORDSIZE  # the archive is padded to a multiple of this


def member_bytes(name: str, n: int) -> int:
    """Tar space of one member: header (+ a PAX header for long names) and padded data."""
    pax = 3 * BLOCK if len(name.encode()) > 100 else 0
    return pax + BLOCK + -(-n // BLOCK) * BLOCK


def sample_bytes(rec: dict) -> int:
    meta = len(meta_bytes(rec["meta"]))
    return member_bytes(f"{rec['key']}.{rec['ext']}", rec["length"]) + member_bytes(
        f"{rec['key']}.json", meta
    )


def meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def assign(records: list[dict], cfg: ShardConfig) -> list[list[dict]]:
    """Shuffle with the seed, then fill shards in order up to either limit.

    The byte limit counts tar framing, end-of-archive blocks and record padding, so no shard
    file exceeds `max_shard_bytes` unless a single sample alone does.
    """
    budget = cfg.max_shard_bytes - 2 * BLOCK - RECORD
    order = np.random.default_rng(cfg.seed).permutation(len(records))
    shards: list[list[dict]] = [[]]
    size = 0
    for i in order:
        rec = records[int(i)]
        n = sample_bytes(rec)
        current = shards[-1]
        if current and (len(current) >= cfg.samples_per_shard or size + n > budget):
            shards.append([])
            size = 0
        shards[-1].append(rec)
        size += n
    return shards if shards[0] else []


def shard_name(cfg: ShardConfig, index: int) -> str:
    return f"{cfg.prefix}-{index:06d}.tar"


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_shard(path: Path, records: list[dict], read: Callable[[dict], bytes]) -> None:
    """Write one shard atomically: `<key>.<ext>` then `<key>.json` for every record."""

    def writer(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rec in records:
                tar.addfile(*_member(f"{rec['key']}.{rec['ext']}", read(rec)))
                tar.addfile(*_member(f"{rec['key']}.json", meta_bytes(rec["meta"])))

    atomic.write_with(path, writer)


def info(name: str, filenames: list[str], lengths: list[int]) -> dict:
    """timm `reader_wds` split info: filenames are relative to the folder of _info.json."""
    return {
        "name": name,
        "splits": {
            "train": {
                "name": "train",
                "num_samples": sum(lengths),
                "filenames": filenames,
                "shard_lengths": lengths,
            }
        },
    }
