"""Which encoded images one DataLoader worker of one rank reads in one epoch.

Shards: every consumer (rank x worker) reads its own stride of one endless, seeded sequence
of shard permutations, through a lean tar reader (`unip.data.tar`) and webdataset's shuffle
buffer. This is sampling with replacement like `wds.ResampledShards`, but within each pass
over the shards the consumers read disjoint shards, and every shard is read once per pass.
Folders: a seeded permutation of the sorted file list per epoch, each position assigned to
one rank and batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import webdataset as wds

from unip.data import tar

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp")

# One encoded image: its key, its bytes (b"" when unreadable) and the seed of its augmentation.
Item = tuple[str, bytes, str]


def permutation(n: int, seed: int, epoch: int, cycle: int) -> list[int]:
    """A permutation of range(n), the same on every platform (str seeds hash with sha512)."""
    order = list(range(n))
    random.Random(f"perm:{seed}:{epoch}:{cycle}").shuffle(order)
    return order


def shard_order(n: int, seed: int, epoch: int, consumer: int, consumers: int) -> Iterator[int]:
    """Positions consumer, consumer + consumers, ... of the endless sequence of shard
    permutations (cycle 0, 1, ...) of this epoch."""
    pos, cycle = consumer, 0
    while True:
        order = permutation(n, seed, epoch, cycle)
        while pos < n:
            yield order[pos]
            pos += consumers
        pos -= n
        cycle += 1


def shard_items(
    shards: list[Path],
    seed: int,
    epoch: int,
    consumer: int,
    consumers: int,
    buffer: int,
    on_error: Callable[[Exception], bool],
) -> Iterator[Item]:
    """The consumer's endless stream of samples, shuffled in a buffer of `buffer` samples."""
    order = shard_order(len(shards), seed, epoch, consumer, consumers)
    samples = (s for i in order for s in tar.samples(shards[i], _is_image, on_error))
    if buffer > 1:
        rng = random.Random(f"shuffle:{seed}:{epoch}:{consumer}")
        samples = wds.shuffle(buffer, initial=min(buffer, 100), rng=rng)(samples)
    tag = f"{seed}:{epoch}:{consumer}"
    for n, sample in enumerate(samples):
        data = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), b"")
        yield sample["__key__"], data, f"{tag}:{n}"


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTS


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, in sorted order (the order seeds refer to)."""
    exts = {f".{e}" for e in IMAGE_EXTS}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file())


def folder_items(
    files: list[Path],
    seed: int,
    epoch: int,
    positions: Iterator[int],
    tail_seed: str,
) -> Iterator[Item]:
    """Files at global epoch positions `positions` (position g is entry g % n of the
    permutation of cycle g // n), then an endless random tail that stands in for files that
    fail to decode, so a worker always fills its batches."""
    n = len(files)
    cycles: dict[int, list[int]] = {}
    for g in positions:
        cycle, i = divmod(g, n)
        if cycle not in cycles:
            cycles = {cycle: permutation(n, seed, epoch, cycle)}
        p = files[cycles[cycle][i]]
        yield str(p), _read(p), f"{seed}:{epoch}:{g}"
    rng = random.Random(tail_seed)
    for k in range(2**62):
        p = files[rng.randrange(n)]
        yield str(p), _read(p), f"{tail_seed}:{k}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # counted as a failed sample by the caller
        return b""
