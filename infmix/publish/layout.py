"""What a published corpus repository holds, and the dry-run folder that shows it.

    README.md                         dataset card (card.py)
    _info.json                        timm split info, filenames in the layout below
    stats.json                        the build's stats (local paths left out)
    shards/0000/infmix-000000.tar     the shards, at most 10,000 files a folder (a Hub limit)

The upload and the dry run both come from one list of entries, so a dry run writes exactly
what an upload would send.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from infmix.errors import InfmixError
from infmix.outdir import LOCK
from infmix.publish.card import render

FILES_PER_FOLDER = 10_000
SHARDS = "shards/"
_PRIVATE_STATS = ("out", "warnings", "skipped_sources")  # they name local paths


@dataclass(frozen=True)
class Entry:
    path: str  # in the repository
    local: Path | None = None  # a file sent as it is...
    data: bytes | None = None  # ...or generated content

    @property
    def size(self) -> int:
        return self.local.stat().st_size if self.local is not None else len(self.data)


@dataclass(frozen=True)
class Layout:
    entries: list[Entry]
    unlicensed: list[str]  # sources without a licence
    num_samples: int

    @property
    def shards(self) -> list[Entry]:
        return [e for e in self.entries if e.local is not None]

    @property
    def metadata(self) -> list[Entry]:
        return [e for e in self.entries if e.local is None]


def shard_path(index: int, name: str) -> str:
    return f"{SHARDS}{index // FILES_PER_FOLDER:04d}/{name}"


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


@contextmanager
def finished_build(out: Path) -> Iterator[None]:
    """Hold a shared lock on a build folder (no build may write to it meanwhile)."""
    if not (out / LOCK).is_file():
        raise InfmixError(f"{out} is not an infmix build folder (no {LOCK})")
    with open(out / LOCK) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InfmixError(f"an infmix build is writing to {out}; wait for it") from None
        missing = [
            n for n in ("_info.json", "stats.json", "config.yaml") if not (out / n).is_file()
        ]
        if missing:
            raise InfmixError(
                f"{out} is not a finished build: {', '.join(missing)} missing "
                "(run the same `infmix build` command again to finish it)"
            )
        yield


def plan(out: Path, repo_id: str) -> Layout:
    """The repository's files for the finished build in `out` (call under `finished_build`)."""
    info = json.loads((out / "_info.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text()) or {}
    split = info["splits"]["train"]
    shards = []
    for i, rel in enumerate(split["filenames"]):
        local = out / rel
        if not local.is_file():
            raise InfmixError(f"shard {local} listed in _info.json is missing")
        shards.append(Entry(shard_path(i, Path(rel).name), local=local))
    published = {
        **info,
        "splits": {"train": {**split, "filenames": [e.path for e in shards]}},
    }
    public_stats = {k: v for k, v in stats.items() if k not in _PRIVATE_STATS}
    n = split["num_samples"]
    if not n or not shards:
        raise InfmixError(f"{out} kept no image: there is nothing to publish")
    card, unlicensed = render(config, stats, n, len(shards), repo_id)
    metadata = [
        Entry("_info.json", data=_json(published)),
        Entry("stats.json", data=_json(public_stats)),
        Entry("README.md", data=card.encode()),
    ]
    return Layout(shards + metadata, unlicensed, n)


def write_folder(entries: list[Entry], dest: Path) -> None:
    """Materialise `entries` under `dest` (new or empty); shards are hard-linked where the
    file system allows, else copied. Built beside `dest` and renamed into place."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InfmixError(f"--dry-run folder {dest} exists and is not empty")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for e in entries:
            target = tmp / e.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if e.local is None:
                target.write_bytes(e.data)
                continue
            try:
                os.link(e.local, target)
                # one inode for both: read-only, so editing the preview cannot change the build
                os.chmod(target, 0o444)
            except OSError:
                shutil.copyfile(e.local, target)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
