"""Processed work units on disk: `work/chunks/NNNNNN.bin` (image bytes) + `.jsonl` (records).

A unit is a fixed slice of the plan (its size does not depend on the worker count). The
`.bin` is committed first and the `.jsonl` last, so an existing `.jsonl` means the whole unit
is done; resume redoes every unit without one. Units are not fsynced (that doubled the cost of
a build): every image read back is checked against the sha256 in its record, and a unit that
a power loss left damaged is reported and redone by the next run, never sharded.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from infmix import atomic
from infmix.config import ProcessConfig
from infmix.dedup.descriptor import DIM
from infmix.errors import InfmixError
from infmix.process import Result, SourceOptions, process_sample
from infmix.sample import Sample


def unit_paths(work: Path, index: int) -> tuple[Path, Path]:
    base = work / "chunks" / f"{index:06d}"
    return base.with_suffix(".bin"), base.with_suffix(".jsonl")


def embedding_path(work: Path, index: int) -> Path:
    """Near-duplicate embeddings of a unit's processed images, one row per record without a
    rejection, in record order."""
    return work / "chunks" / f"{index:06d}.emb.npy"


def write_embeddings(work: Path, index: int, rows: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows, dtype=np.float32))
    atomic.write_bytes(embedding_path(work, index), buf.getvalue(), durable=False)


def read_embeddings(work: Path, index: int, n: int, dim: int) -> np.ndarray:
    try:
        rows = np.load(embedding_path(work, index), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DamagedUnit(work, index, f"embeddings unreadable: {e}") from None
    if rows.shape != (n, dim):
        raise DamagedUnit(work, index, f"embeddings have shape {rows.shape}, not {(n, dim)}")
    return rows


def is_done(work: Path, index: int) -> bool:
    return unit_paths(work, index)[1].exists()


def _record(r: Result, offset: int) -> dict:
    rec = {
        "key": r.sample.key,
        "source": r.sample.source,
        "path": r.sample.path,
        "input_bytes": r.input_bytes,
        "seconds": round(r.seconds, 6),
    }
    if r.ok:
        rec.update(offset=offset, length=len(r.data), ext=r.ext, meta=r.meta)
    else:
        rec.update(reason=r.reason, detail=r.detail)
    return rec


def run_unit(
    work: Path,
    index: int,
    samples: list[Sample],
    options: dict[str, SourceOptions],
    cfg: ProcessConfig,
    embed: bool = False,
) -> dict:
    """Process one unit and commit it (.bin, then .emb.npy, then .jsonl); returns counts for
    the progress display. `embed`: store the built-in descriptor of every kept image."""
    results = [process_sample(s, options[s.source], cfg, embed) for s in samples]
    bin_path, jsonl_path = unit_paths(work, index)
    records, offset, rows = [], 0, []
    with atomic.atomic_open(bin_path, "wb", durable=False) as f:
        for r in results:
            records.append(_record(r, offset))
            if r.ok:
                f.write(r.data)
                offset += len(r.data)
                if embed:
                    rows.append(r.embedding)
    if embed:
        write_embeddings(work, index, np.array(rows, np.float32).reshape(len(rows), DIM))
    atomic.write_jsonl(jsonl_path, records, durable=False)
    return {"index": index, "samples": len(samples), "kept": sum(r.ok for r in results)}


class DamagedUnit(InfmixError):
    """A committed unit whose files do not match its records; it is removed so a rerun redoes it."""

    def __init__(self, work: Path, index: int, why: str):
        for p in unit_paths(work, index):
            p.unlink(missing_ok=True)
        super().__init__(
            f"work unit {index} was damaged ({why}), probably by a crash of the machine; "
            "it was removed: run the same command again to redo it"
        )


def read_unit(work: Path, index: int) -> list[dict]:
    try:
        return atomic.read_jsonl(unit_paths(work, index)[1])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedUnit(work, index, f"unreadable records: {e}") from None


def read_image(work: Path, index: int, rec: dict) -> bytes:
    try:
        with open(unit_paths(work, index)[0], "rb") as f:
            f.seek(rec["offset"])
            data = f.read(rec["length"])
    except FileNotFoundError:
        raise DamagedUnit(work, index, "image data missing") from None
    if hashlib.sha256(data).hexdigest() != rec["meta"]["sha256"]:
        raise DamagedUnit(work, index, f"image of {rec['key']} does not match its sha256")
    return data
