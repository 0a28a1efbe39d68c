"""Processed work units on disk: `work/chunks/NNNNNN.bin` (image bytes) + `.jsonl` (records).

A unit is a fixed slice of the plan (its size does not depend on the worker count). The
`.bin` is committed first and the `.jsonl` last, so an existing `.jsonl` means the whole unit
is done; resume redoes every unit without one.
"""

from __future__ import annotations

from pathlib import Path

from infmix import atomic
from infmix.config import ProcessConfig
from infmix.process import Result, SourceOptions, process_sample
from infmix.sample import Sample


def unit_paths(work: Path, index: int) -> tuple[Path, Path]:
    base = work / "chunks" / f"{index:06d}"
    return base.with_suffix(".bin"), base.with_suffix(".jsonl")


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
        rec.update(
            offset=offset, length=len(r.data), ext=r.ext, pixel_hash=r.pixel_hash, meta=r.meta
        )
    else:
        rec.update(reason=r.reason, detail=r.detail)
    return rec


def run_unit(
    work: Path,
    index: int,
    samples: list[Sample],
    options: dict[str, SourceOptions],
    cfg: ProcessConfig,
) -> dict:
    """Process one unit and commit it; returns counts for the progress display."""
    results = [process_sample(s, options[s.source], cfg) for s in samples]
    bin_path, jsonl_path = unit_paths(work, index)
    records, offset = [], 0
    with atomic.atomic_open(bin_path, "wb") as f:
        for r in results:
            records.append(_record(r, offset))
            if r.ok:
                f.write(r.data)
                offset += len(r.data)
    atomic.write_jsonl(jsonl_path, records)
    return {"index": index, "samples": len(samples), "kept": sum(r.ok for r in results)}


def read_unit(work: Path, index: int) -> list[dict]:
    return atomic.read_jsonl(unit_paths(work, index)[1])


def read_image(work: Path, index: int, rec: dict) -> bytes:
    with open(unit_paths(work, index)[0], "rb") as f:
        f.seek(rec["offset"])
        data = f.read(rec["length"])
    if len(data) != rec["length"]:
        raise OSError(f"work unit {index} is truncated; delete {work} and rebuild")
    return data
