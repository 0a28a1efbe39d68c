"""`infmix build`: plan -> process (resumable units) -> embed -> dedup -> shard -> reports.

Every stage commits through an atomic rename, and every later stage is a pure function of
committed files, so a build killed at any moment and run again ends with exactly the bytes of
an uninterrupted build. The resolved config is saved first (see outdir.py); a rerun with another
config or environment into the same folder is refused rather than mixed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from infmix import atomic, chunks, outdir, report, shards
from infmix.config import BuildConfig, dump_config
from infmix.dedup.descriptor import DIM
from infmix.dedup.embed import embed_units, uses_builtin
from infmix.dedup.report import write_duplicates
from infmix.dedup.stages import deduplicate
from infmix.engines import check as check_engine
from infmix.engines import runner
from infmix.errors import InfmixError
from infmix.process import SourceOptions
from infmix.sample import Sample
from infmix.sources import plan as make_plan


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "- img/s", style="progress.data.speed")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def load_plan(cfg: BuildConfig, work: Path, console: Console) -> list[Sample]:
    """The plan is listed once and committed; a resumed build reuses it as it was."""
    path = work / "plan.jsonl"
    atomic.remove_temporaries(work)
    if path.exists():
        return [Sample(**row) for row in atomic.read_jsonl(path)]
    with console.status("planning: listing source folders"):
        samples = make_plan(cfg)
    atomic.write_jsonl(path, (s.to_dict() for s in samples))
    return samples


def process_all(
    cfg: BuildConfig,
    samples: list[Sample],
    work: Path,
    workers: int | None,
    console: Console,
    engine: str = "local",
    ray_address: str | None = None,
) -> int:
    """Run every unit not yet committed; returns the number of units this run processed.
    Units are the same whatever the engine, so a build may be resumed with another one."""
    atomic.remove_temporaries(work / "chunks")
    size = cfg.process.chunk_size
    options = {s.name: SourceOptions(tuple(s.crop), s.drop_dark_max) for s in cfg.sources}
    process_cfg, near = cfg.process, cfg.dedup.near
    if near.enabled and not uses_builtin(near):
        # a model embedder decodes every stored image later: decode each one here, where one
        # that libjpeg cannot read becomes a rejection instead of stopping the embedding
        process_cfg = process_cfg.model_copy(update={"verify_passthrough": True})
    jobs = []
    for i, start in enumerate(range(0, len(samples), size)):
        if not chunks.is_done(work, i):
            batch = samples[start : start + size]
            jobs.append((work, i, batch, options, process_cfg, uses_builtin(near)))
    done_before = len(samples) - sum(len(j[2]) for j in jobs)
    with _progress(console) as bar:
        task = bar.add_task("processing", total=len(samples), completed=done_before)
        roots = [cfg.source_root(s) for s in cfg.enabled_sources()]
        runner(engine, ray_address, work, roots)(
            chunks.run_unit,
            jobs,
            workers,
            cfg.process.max_pixels,
            lambda r: bar.advance(task, r["samples"]),
        )
    return len(jobs)


def embed_all(cfg: BuildConfig, work: Path, n_units: int, console: Console) -> int:
    """Model embedders run after processing; returns the embedding dimension."""
    if uses_builtin(cfg.dedup.near) or not cfg.dedup.near.enabled:
        return DIM
    atomic.remove_temporaries(work / "chunks")
    with _progress(console) as bar:
        task = bar.add_task(f"embedding ({cfg.dedup.near.embedder})", total=None)
        return embed_units(work, n_units, cfg.dedup.near, lambda n: bar.advance(task, n))


def collect(work: Path, samples: list[Sample], chunk_size: int) -> list[dict]:
    """Every unit's records in plan order, each tagged with its unit index and checked
    against the plan, so a unit emptied by a machine crash can never drop samples silently."""
    out = []
    for i, start in enumerate(range(0, len(samples), chunk_size)):
        records = chunks.read_unit(work, i)
        expected = [s.key for s in samples[start : start + chunk_size]]
        if [r["key"] for r in records] != expected:
            raise chunks.DamagedUnit(work, i, "records do not match the plan")
        ok = [r for r in records if "reason" not in r]
        for row, rec in enumerate(ok):  # row in the unit's embeddings file
            rec.update(emb_row=row, unit_rows=len(ok))
        for rec in records:
            rec["unit"] = i
        out += records
    return out


def write_shards(
    cfg: BuildConfig, out: Path, work: Path, kept: list[dict], console: Console
) -> tuple[list[list[dict]], list[str]]:
    groups = shards.assign(kept, cfg.shards)
    names = [shards.shard_name(cfg.shards, i) for i in range(len(groups))]
    folder = out / "shards"
    folder.mkdir(exist_ok=True)
    atomic.remove_temporaries(folder)
    for stale in set(p.name for p in folder.glob("*.tar")) - set(names):
        (folder / stale).unlink()
    with _progress(console) as bar:
        task = bar.add_task("sharding", total=len(kept))
        for name, group in zip(names, groups, strict=True):
            if not (folder / name).exists():  # present means committed by rename
                shards.write_shard(
                    folder / name, group, lambda r: chunks.read_image(work, r["unit"], r)
                )
            bar.advance(task, len(group))
    return groups, names


def build(
    cfg: BuildConfig,
    out: Path | str,
    workers: int | None = None,
    overwrite: bool = False,
    console: Console | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Build the corpus into `out` (or finish an interrupted build there); returns stats.
    `engine`: `local` or `ray` (`ray_address`: a cluster; None starts a local instance)."""
    console = console or Console(stderr=True)
    out = Path(out).resolve()
    check_engine(engine, ray_address)
    if engine == "local":  # Ray schedules over its cluster's CPUs unless told
        workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with outdir.claim(out, dump_config(cfg), overwrite) as work:
        return _build(cfg, out, work, workers, console, t0, engine, ray_address)


def _build(
    cfg: BuildConfig,
    out: Path,
    work: Path,
    workers: int | None,
    console: Console,
    t0: float,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict:
    samples = load_plan(cfg, work, console)
    warnings = empty_sources(cfg, samples)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    processed = process_all(cfg, samples, work, workers, console, engine, ray_address)
    n_units = -(-len(samples) // cfg.process.chunk_size)
    dim = embed_all(cfg, work, n_units, console)
    records = collect(work, samples, cfg.process.chunk_size)
    ok = [r for r in records if "reason" not in r]
    rejected = [r for r in records if "reason" in r]
    with console.status("removing duplicates"):
        result = deduplicate(ok, cfg, work, dim)
    kept = result.kept
    groups, names = write_shards(cfg, out, work, kept, console)
    dropped = sorted(rejected + result.dropped, key=lambda r: r["key"])
    names_enabled = [s.name for s in cfg.enabled_sources()]
    per_source = report.source_stats(records, kept, dropped, names_enabled)
    stats = {
        "out": str(out),
        "workers": workers,
        "units_processed_this_run": processed,
        "num_shards": len(names),
        "sources": per_source,
        "total": report.totals(per_source),
        "skipped_sources": cfg._skipped,
        "warnings": warnings,
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    report.write_manifest(out / "manifest.parquet", groups, names)
    if cfg.dedup.near.enabled:
        write_duplicates(out, work, result.clusters)
    report.write_rejected(out / "rejected.jsonl", dropped)
    atomic.write_json(out / "stats.json", stats)
    info = shards.info(cfg.name, [f"shards/{n}" for n in names], [len(g) for g in groups])
    atomic.write_json(out / "_info.json", info)
    if not kept:
        raise InfmixError(
            f"no image was kept: {len(samples)} planned, all dropped "
            f"(see {out / 'rejected.jsonl'} and stats.json)"
        )
    return stats


def empty_sources(cfg: BuildConfig, samples: list[Sample]) -> list[str]:
    """A source that lists no image is almost always a wrong root or sub-folder option."""
    planned = {s.source for s in samples}
    return [
        f"source {s.name}: no images found under {cfg.source_root(s)} "
        "(check root, extensions, exclude and the options of its kind)"
        for s in cfg.enabled_sources()
        if s.name not in planned
    ]
