"""Atomic file writes: write to a temporary name in the same folder, then rename.

The rename is the commit: a reader (or a resumed build) sees either the whole file or none.
Final outputs are fsynced before the rename (durable across power loss); intermediate work
files may skip that and are verified when read instead (see chunks.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_open(path: Path, mode: str = "wb", durable: bool = True):
    """Open a temporary file that replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable) as f:
        f.write(data)


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict], durable: bool = True) -> None:
    with atomic_open(path, "w", durable) as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_with(path: Path, writer: Callable[[IO], None], mode: str = "wb") -> None:
    with atomic_open(path, mode) as f:
        writer(f)


def remove_temporaries(folder: Path) -> None:
    """Leftovers of a killed run: never final, always safe to delete."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)
