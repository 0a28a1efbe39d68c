"""`make_loader`: uint8 grayscale crops from infmix shards or an image folder, DDP-ready.

Every rank yields the same number of batches per epoch (the epoch length from `_info.json`
divided across ranks), so no DDP rank waits on another. Batch j of a rank is made by logical
worker j % workers, and every sample's augmentation is seeded by where it sits in the stream,
so an epoch is reproducible per (seed, rank, worker, epoch) and can be resumed mid-epoch
without decoding what was already seen: `set_epoch(epoch, skip=batches_done)`.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from unip.data.augment import MAX_PIXELS, random_crop
from unip.data.streams import folder_items, list_images, shard_items
from unip.errors import UnipError

MEAN, STD = 0.3801, 0.1871  # InfMix grayscale statistics (UNIP)
MAX_FAILURES_IN_A_ROW = 1000
log = logging.getLogger(__name__)


class BatchStream(IterableDataset):
    """The batches of one rank; inside a DataLoader worker, that worker's share of them."""

    def __init__(self, kind: str, files: list[Path], batches: int, batch_size: int, **kw):
        self.kind, self.files, self.batches, self.batch_size = kind, files, batches, batch_size
        self.size, self.scale, self.seed = kw["image_size"], kw["scale"], kw["seed"]
        self.buffer, self.rank, self.world = kw["shuffle_buffer"], kw["rank"], kw["world_size"]
        self.with_keys = kw.get("with_keys", False)
        # shared with the DataLoader's (persistent) workers, so set_epoch reaches them
        self.epoch, self.skip, self.failed = (mp.Value("q", 0) for _ in range(3))
        self._warned = False

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch, skip = self.epoch.value, self.skip.value
        logical = (worker + skip) % workers  # resumed at batch `skip`: it comes from worker 0
        mine = range(logical, self.batches, workers)
        done = len(range(logical, min(skip, self.batches), workers))
        if self.kind == "shards":
            consumer, consumers = self.rank * workers + logical, self.world * workers
            items = shard_items(
                self.files, self.seed, epoch, consumer, consumers, self.buffer, self._tar_error
            )
            items = itertools.islice(items, done * self.batch_size, None)
        else:
            b = self.batch_size
            positions = (
                q * self.world + self.rank for j in mine[done:] for q in range(j * b, j * b + b)
            )
            tail = f"tail:{self.seed}:{epoch}:{self.rank}:{logical}"
            items = folder_items(self.files, self.seed, epoch, positions, tail)
        return self._assemble(items, len(mine) - done)

    def _assemble(self, items: Iterator, count: int) -> Iterator:
        """Every batch takes exactly `batch_size` items of the stream, so batch j always starts
        at item j x batch_size (what a mid-epoch resume skips to). An item that does not
        decode is replaced by another image of its batch (zeros if none decodes)."""
        b, s = self.batch_size, self.size
        in_a_row = 0
        for _ in range(count):
            out, keys, bad = np.zeros((b, 1, s, s), np.uint8), [], []
            for slot in range(b):
                key, data, tag = next(items)
                keys.append(key)
                try:
                    img, flip = random_crop(data, s, random.Random(tag), self.scale, MAX_PIXELS)
                except Exception as exn:  # bad input is expected input: count, go on
                    in_a_row = self._failure(key, exn, in_a_row)
                    bad.append(slot)
                    continue
                in_a_row = 0
                out[slot, 0] = img[:, ::-1] if flip else img
            good = [i for i in range(b) if i not in set(bad)]
            for n, slot in enumerate(bad):
                if good:
                    out[slot] = out[good[n % len(good)]]
                    keys[slot] = keys[good[n % len(good)]]
            x = torch.from_numpy(out)
            yield (x, keys) if self.with_keys else x

    def _failure(self, key: str, exn: Exception, in_a_row: int) -> int:
        with self.failed.get_lock():
            self.failed.value += 1
        if not self._warned:
            log.warning("skipping undecodable samples (first: %s: %s)", key, exn)
            self._warned = True
        if in_a_row + 1 >= MAX_FAILURES_IN_A_ROW:
            raise UnipError(f"{in_a_row + 1} samples in a row failed to decode (last: {key})")
        return in_a_row + 1

    def _tar_error(self, exn: Exception) -> bool:
        """webdataset's handler for unreadable shards or members: skip, count, warn once."""
        self._failure(str(exn.args[-1]) if exn.args else "shard", exn, 0)
        return True


class Loader:
    """Iterate for one epoch of uint8 batches (B, 1, S, S); `len()` is batches per epoch."""

    def __init__(self, stream: BatchStream, workers: int):
        self.stream, self.epoch, self._skip = stream, 0, 0
        extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
        self.dataloader = DataLoader(
            stream,
            batch_size=None,  # the stream yields whole batches
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            **extra,
        )

    def __len__(self) -> int:
        return self.stream.batches

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The next iteration yields epoch `epoch` from batch `skip` on (cheap: the skipped
        samples are not decoded). Without a call, each full iteration advances the epoch."""
        self.epoch, self._skip = epoch, skip

    @property
    def skipped(self) -> int:
        """Samples skipped so far because they could not be read or decoded."""
        return self.stream.failed.value

    def __iter__(self) -> Iterator:
        self.stream.epoch.value, self.stream.skip.value = self.epoch, self._skip
        self._skip = 0
        yield from self.dataloader
        self.epoch += 1


def make_loader(
    path: Path | str,
    batch_size: int,
    workers: int,
    *,
    image_size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    seed: int = 0,
    shuffle_buffer: int = 2000,
    epoch_length: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    with_keys: bool = False,
) -> Loader:
    """Augmented uint8 crops of an infmix build (a folder with `_info.json`) or an image folder.

    `epoch_length`: samples per epoch over all ranks (default: the corpus size); each rank
    yields `epoch_length // (world_size * batch_size)` batches. `rank`/`world_size` default to
    torch.distributed's when it is initialised. `with_keys`: yield (images, keys) instead.
    """
    rank, world_size = _rank_world(rank, world_size)
    if batch_size < 1 or workers < 0 or image_size < 1 or not 0 < scale[0] <= scale[1] <= 1:
        raise UnipError(f"bad loader settings: batch {batch_size}, workers {workers}, {scale}")
    kind, files, size = _source(Path(path))
    batches = (epoch_length or size) // (world_size * batch_size)
    if batches < 1:
        raise UnipError(
            f"{path}: {epoch_length or size} samples per epoch do not make one batch of "
            f"{batch_size} on each of {world_size} ranks"
        )
    stream = BatchStream(
        kind, files, batches, batch_size, image_size=image_size, scale=tuple(scale), seed=seed,
        shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size, with_keys=with_keys,
    )  # fmt: skip
    return Loader(stream, workers)


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    live = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else (dist.get_rank() if live else 0)
    world_size = world_size if world_size is not None else (dist.get_world_size() if live else 1)
    if not 0 <= rank < world_size:
        raise UnipError(f"rank {rank} is not in [0, world_size {world_size})")
    return rank, world_size


def _source(path: Path) -> tuple[str, list[Path], int]:
    """("shards", tar files, samples) for an infmix build; ("folder", images, count) else."""
    info = path / "_info.json"
    if info.is_file():
        split = json.loads(info.read_text())["splits"]["train"]
        shards = [path / f for f in split["filenames"]]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing or not shards:
            raise UnipError(f"{info}: shards missing: {', '.join(missing[:3]) or 'none listed'}")
        return "shards", shards, int(split["num_samples"])
    if not path.is_dir():
        raise UnipError(f"{path}: not an infmix build (_info.json) or a folder of images")
    images = list_images(path)
    if not images:
        raise UnipError(f"{path}: no _info.json and no images (jpg, png, ...) under it")
    return "folder", images, len(images)


def to_model_input(
    x: torch.Tensor, device: torch.device | str, mean: float = MEAN, std: float = STD
) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> normalised float32 (B, 3, S, S), converted on `device`."""
    x = x.to(device, non_blocking=True)
    y = x.float().sub_(255.0 * mean).mul_(1.0 / (255.0 * std))
    return y.expand(-1, 3, -1, -1).contiguous() if y.shape[1] == 1 else y
