"""Deterministic WebDataset tar shards and the `_info.json` that timm's reader reads.

Kept samples are shuffled by a seeded hash of their keys (so every shard mixes sources), packed
greedily under the sample and byte limits, and written with fixed member metadata (mtime 0,
uid/gid 0, no user names, mode 0644), image before json, so equal inputs give equal bytes.
The bytes are exactly those of `tarfile` in PAX format; the usual header (a short ASCII name)
is formatted here directly, which is several times faster than building a `TarInfo`.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from infmix import atomic
from infmix.config import ShardConfig

BLOCK = 512
RECORD = tarfile.RECORDSIZE  # the archive is padded to a multiple of this


def member_bytes(name: str, n: int) -> int:
    """Tar space of one member: its header exactly as written (a PAX header included for long
    names) and its data padded to 512 bytes."""
    return len(header(name, n)) + -(-n // BLOCK) * BLOCK


def header(name: str, size: int) -> bytes:
    """The header block(s) `tarfile` writes for a regular file of our fixed metadata."""
    raw = name.encode("ascii") if name.isascii() else b""
    if not raw or len(raw) > 100 or size >= 8**11:  # PAX records needed: let tarfile do it
        info = _member(name)
        info.size = size
        return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    h = bytearray(BLOCK)
    h[: len(raw)] = raw
    # mode, uid, gid, size, mtime; then the checksum field counted as spaces; type 0
    h[100:148] = b"0000644\x000000000\x000000000\x00%011o\x0000000000000\x00" % size
    h[148:156] = b"        "
    h[156] = ord(tarfile.REGTYPE)
    h[257:265] = tarfile.POSIX_MAGIC
    h[148:155] = b"%06o\x00" % sum(h)
    return bytes(h)


def sample_bytes(rec: dict) -> int:
    meta = len(meta_bytes(rec["meta"]))
    return member_bytes(f"{rec['key']}.{rec['ext']}", rec["length"]) + member_bytes(
        f"{rec['key']}.json", meta
    )


def meta_bytes(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def shuffled(records: list[dict], seed: int) -> list[int]:
    """A seeded shuffle defined by sha256 of (seed, key): the same on every platform and
    numpy version (a numpy Generator's stream is not promised to stay the same)."""

    def rank(i: int) -> bytes:
        return hashlib.sha256(f"{seed}:{records[i]['key']}".encode()).digest()

    return sorted(range(len(records)), key=rank)


def assign(records: list[dict], cfg: ShardConfig) -> list[list[dict]]:
    """Shuffle with the seed, then fill shards in order up to either limit.

    The byte limit counts tar framing, end-of-archive blocks and record padding, so no shard
    file exceeds `max_shard_bytes` unless a single sample alone does.
    """
    budget = cfg.max_shard_bytes - 2 * BLOCK - RECORD
    order = shuffled(records, cfg.seed)
    shards: list[list[dict]] = [[]]
    size = 0
    for i in order:
        rec = records[i]
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


def _member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: Path, records: list[dict], read: Callable[[dict], bytes]) -> None:
    """Write one shard atomically: `<key>.<ext>` then `<key>.json` for every record."""

    def writer(f) -> None:
        offset = 0
        for rec in records:
            for name, data in (
                (f"{rec['key']}.{rec['ext']}", read(rec)),
                (f"{rec['key']}.json", meta_bytes(rec["meta"])),
            ):
                head = header(name, len(data))
                pad = -len(data) % BLOCK
                f.write(head)
                f.write(data)
                f.write(bytes(pad))
                offset += len(head) + len(data) + pad
        end = 2 * BLOCK  # end-of-archive blocks, then padding to a whole record, as tarfile
        f.write(bytes(end + -(offset + end) % RECORD))

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
