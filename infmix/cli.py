"""The `infmix` command line: thin wrappers that parse, load the config and call the library.

Expected failures print one line and exit 1; INFMIX_DEBUG=1 shows the traceback. Tracebacks
never show local variables (a Hub token may be in scope).
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from infmix import __version__
from infmix.errors import InfmixError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help="Build grayscale infrared pre-training corpora as WebDataset shards.",
)
console = Console(stderr=True)


def _fail(e: Exception) -> None:
    if os.environ.get("INFMIX_DEBUG") == "1":
        raise e
    console.print("[bold red]error:[/]", escape(str(e)), highlight=False, soft_wrap=True)
    raise typer.Exit(1)


class Engine(StrEnum):
    local = "local"
    ray = "ray"


@app.command()
def build(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (see pipelines/).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (created or resumed).")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value overrides, e.g. process.max_side=640 sources.llvip.root=/d/LLVIP"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, help="Processes (default: all CPUs). Output does not depend on it."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete the build in --out first.")] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="Where units run: processes here, or Ray tasks (needs the `ray` extra; "
            "--workers then caps the units in flight). Same output: a build may be resumed "
            "with the other engine.",
        ),
    ] = Engine.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to use (`auto`, HOST:PORT); default: start a local instance. "
            "--out and the sources must be on a filesystem every node shares."
        ),
    ] = None,
) -> None:
    """Build (or resume) a corpus from the sources in CONFIG."""
    from infmix.build import build as run_build
    from infmix.config import load_config
    from infmix.report import print_summary

    try:
        cfg = load_config(config, overrides or [])
        for skipped in cfg._skipped:
            console.print(f"[yellow]warning:[/] skipping source {skipped}", highlight=False)
        stats = run_build(
            cfg, out, workers, overwrite, console, engine=engine.value, ray_address=ray_address
        )
    except (InfmixError, OSError) as e:  # OSError: the disk is full, a folder unwritable...
        _fail(e)
    print_summary(Console(), stats)


@app.command("demo-sources")
def demo_sources(
    out: Annotated[Path, typer.Argument(help="Folder to write the fake datasets into.")],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Write small fake datasets in real layouts (what pipelines/demo.yaml reads)."""
    from infmix.demo import write_demo_sources

    try:
        counts = write_demo_sources(out, seed=seed)
    except OSError as e:
        _fail(e)
    for name, n in counts.items():
        console.print(f"{name:12s} {n:4d} files", highlight=False)
    console.print(f"demo sources written to {out}")


@app.command("dedup-calibrate")
def dedup_calibrate(
    pairs: Annotated[
        Path | None,
        typer.Argument(help="CSV of path_a,path_b,label (1: same picture, 0: different)."),
    ] = None,
    synthetic: Annotated[
        int,
        typer.Option(help="Without PAIRS: planted synthetic scenes to generate (12 pairs each)."),
    ] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic pairs.")] = 0,
    thresholds: Annotated[
        str | None, typer.Option(help="Comma-separated thresholds to score.")
    ] = None,
    embedder: Annotated[str, typer.Option(help="`thumb` or `timm:<model-name>`.")] = "thumb",
    checkpoint: Annotated[Path | None, typer.Option(help="Local timm weights.")] = None,
) -> None:
    """Print precision and recall of near-duplicate thresholds on labelled pairs."""
    from rich.table import Table

    from infmix.config import NearDedupConfig
    from infmix.dedup import calibrate as cal

    try:
        ths = [float(t) for t in thresholds.split(",")] if thresholds else cal.DEFAULT_THRESHOLDS
        embed = cal.builtin_embed
        if embedder != "thumb":
            from infmix.dedup.embed import make_embedder

            embed = make_embedder(NearDedupConfig(embedder=embedder, checkpoint=checkpoint))
        if pairs is None:
            sims, labels, _ = cal.synthetic_sims(synthetic, seed, embed)
        else:
            sims, labels = cal.file_sims(pairs, embed)
    except (InfmixError, ValueError) as e:
        _fail(e)
    table = Table(title=f"{embedder}: {labels.sum()} duplicate / {(~labels).sum()} distinct pairs")
    for col in ("threshold", "precision", "recall", "false pos", "missed"):
        table.add_column(col, justify="right")
    for r in cal.scores(sims, labels, ths):
        table.add_row(
            f"{r['threshold']:.4f}",
            f"{r['precision']:.4f}",
            f"{r['recall']:.4f}",
            str(r["fp"]),
            str(r["fn"]),
        )
    Console().print(table)


@app.command()
def publish(
    build_dir: Annotated[Path, typer.Argument(help="A finished `infmix build` folder.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repository OWNER/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
    revision: Annotated[
        str | None, typer.Option(help="Branch to commit to (created if missing).")
    ] = None,
    dry_run: Annotated[
        Path | None,
        typer.Option("--dry-run", help="Write the files that would be uploaded here; no network."),
    ] = None,
) -> None:
    """Upload a corpus to the Hugging Face Hub (token: HF_TOKEN or your saved login)."""
    from infmix.publish import publish as run_publish

    try:
        result = run_publish(build_dir, repo_id, private, revision, dry_run, console=console)
    except (InfmixError, OSError) as e:
        _fail(e)
    if dry_run is None:
        console.print(
            f"published {build_dir} to https://huggingface.co/datasets/{repo_id}: "
            f"{result['sent']} files sent, {result['skipped']} already there",
            highlight=False,
        )


@app.command("inspect")
def inspect_corpus(
    out: Annotated[Path, typer.Argument(metavar="DIR", help="A finished `infmix build` folder.")],
    per_source: Annotated[
        int, typer.Option(min=1, help="Random images per source on DIR/samples.png.")
    ] = 6,
    sample: Annotated[
        int, typer.Option(min=1, help="Images decoded (at most) for the intensity histogram.")
    ] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of both random samples.")] = 0,
) -> None:
    """Summarise a built corpus and write DIR/samples.png, a row of images per source."""
    from infmix.inspect import inspect, print_inspect

    try:
        summary = inspect(out, per_source=per_source, sample=sample, seed=seed)
    except (InfmixError, OSError) as e:
        _fail(e)
    print_inspect(Console(), summary)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    app()
