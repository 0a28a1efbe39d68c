"""The `unip` command line. Training and analysis commands arrive with their recipes; `info`
reports what this install can use (torch, CUDA, timm, webdataset) without importing torch at
start-up, so `unip --help` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Annotated

import typer

from unip import __version__

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    help="UNIP: attention analysis, NMI-HAD distillation and segmentation for infrared.",
)

OPTIONAL = ("torch", "torchvision", "timm", "webdataset")


def environment() -> dict:
    """Versions of the optional packages `unip` builds on, and the CUDA devices torch sees."""
    env: dict = {"unip": __version__}
    for name in OPTIONAL:
        if importlib.util.find_spec(name) is None:
            env[name] = None
            continue
        env[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    if env["torch"]:
        import torch

        env["cuda_devices"] = torch.cuda.device_count()
    return env


@app.command()
def info(
    corpus: Annotated[Path | None, typer.Option(help="An infmix build folder to describe.")] = None,
) -> None:
    """Print the environment, and the sample count of an infmix corpus if one is given."""
    env = environment()
    if corpus is not None:
        info_path = corpus / "_info.json"
        if not info_path.is_file():
            typer.echo(f"error: {corpus} has no _info.json (not an infmix build folder)", err=True)
            raise typer.Exit(1)
        split = json.loads(info_path.read_text())["splits"]["train"]
        env["corpus"] = {
            "path": str(corpus),
            "samples": split["num_samples"],
            "shards": len(split["filenames"]),
        }
    typer.echo(json.dumps(env, indent=2))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
