"""What a build tells its user: stats.json, manifest.parquet, rejected.jsonl, summary table."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from infmix import atomic
from infmix.sample import display_path


def source_stats(
    records: list[dict], kept: list[dict], dropped: list[dict], sources: list[str] = ()
) -> dict:
    """Per source: seen, kept, dropped by reason, bytes in and out, images/s of processing."""
    out: dict[str, dict] = defaultdict(
        lambda: {"seen": 0, "kept": 0, "dropped": {}, "input_bytes": 0, "bytes": 0, "seconds": 0.0}
    )
    for name in sources:  # a row even for a source that listed nothing
        out[name]
    for r in records:
        s = out[r["source"]]
        s["seen"] += 1
        s["input_bytes"] += r["input_bytes"]
        s["seconds"] += r["seconds"]
    for r in kept:
        out[r["source"]]["kept"] += 1
        out[r["source"]]["bytes"] += r["length"]
    reasons: dict[str, Counter] = defaultdict(Counter)
    for r in dropped:
        reasons[r["source"]][r["reason"]] += 1
    for name, s in out.items():
        s["dropped"] = dict(sorted(reasons[name].items()))
        s["images_per_s"] = round(s["seen"] / s["seconds"], 2) if s["seconds"] > 0 else None
        s["seconds"] = round(s["seconds"], 3)
    return dict(sorted(out.items()))


def totals(per_source: dict) -> dict:
    t = {"seen": 0, "kept": 0, "input_bytes": 0, "bytes": 0, "seconds": 0.0}
    dropped: Counter = Counter()
    for s in per_source.values():
        for k in t:
            t[k] += s[k]
        dropped.update(s["dropped"])
    rate = round(t["seen"] / t["seconds"], 2) if t["seconds"] > 0 else None
    return {
        **t,
        "seconds": round(t["seconds"], 3),
        "images_per_s": rate,
        "dropped": dict(sorted(dropped.items())),
    }


def write_rejected(path: Path, dropped: list[dict]) -> None:
    fields = ("path", "source", "key", "reason", "detail", "duplicate_of")
    rows = (
        {k: display_path(r[k]) if k == "path" else r[k] for k in fields if k in r} for r in dropped
    )
    atomic.write_jsonl(path, rows)


def write_manifest(path: Path, shards: list[list[dict]], names: list[str]) -> None:
    rows: dict[str, list] = defaultdict(list)
    for name, recs in zip(names, shards, strict=True):
        for i, r in enumerate(recs):
            m = r["meta"]
            for col, val in (
                ("key", r["key"]),
                ("shard", name),
                ("index_in_shard", i),
                ("source", m["source"]),
                ("modality", m["modality"]),
                ("path", m["path"]),
                ("width", m["width"]),
                ("height", m["height"]),
                ("original_width", m["original"]["width"]),
                ("original_height", m["original"]["height"]),
                ("original_mode", m["original"]["mode"]),
                ("bit_depth", m["original"]["bit_depth"]),
                ("conversion", m["conversion"]["method"]),
                ("ext", r["ext"]),
                ("bytes", r["length"]),
                ("sha256", m["sha256"]),
            ):
                rows[col].append(val)
    table = pa.table(rows) if rows else pa.table({"key": pa.array([], pa.string())})
    atomic.write_with(path, lambda f: pq.write_table(table, f))


def print_summary(console: Console, stats: dict) -> None:
    table = Table(title=f"infmix build: {stats['out']}")
    for col in ("source", "seen", "kept", "duplicates", "rejected", "stored MB", "img/s"):
        table.add_column(col, justify="left" if col == "source" else "right")
    rows = [*list(stats["sources"].items()), ("total", stats["total"])]
    for name, s in rows:
        dups = sum(v for k, v in s["dropped"].items() if k.endswith("duplicate"))
        rejected = sum(s["dropped"].values()) - dups
        rate = s.get("images_per_s")
        table.add_row(
            name,
            str(s["seen"]),
            str(s["kept"]),
            str(dups),
            str(rejected),
            f"{s['bytes'] / 1e6:.2f}",
            f"{rate:.0f}" if rate else "-",
        )
    console.print(table)
    t = stats["total"]
    if t["dropped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in t["dropped"].items())
        console.print(f"dropped by reason: {reasons} (see rejected.jsonl)")
    console.print(
        f"{stats['num_shards']} shards, {t['kept']} samples, {stats['wall_seconds']:.1f} s wall"
    )
