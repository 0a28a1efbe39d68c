"""The `unip` command line: `analyze` (attention patterns, layer choice), `train`
(NMI-HAD distillation), `export` (student weights for timm), `finetune` / `eval`
(segmentation), `demo-segset` (a generated set for the demo), `info` (the environment).

Expected failures print one `error: ...` line and exit 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
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
def train(
    config: Annotated[Path, typer.Argument(help="Distillation recipe (pipelines/distill/).")],
    data: Annotated[Path, typer.Option("--data", help="An infmix build folder, or images.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (created, or resumed).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. optim.epochs=10")
    ] = None,
) -> None:
    """Distill a teacher's hybrid-layer attention into a student (resumes from --out)."""
    from unip.config import load_train_config
    from unip.train import train as run_train

    metrics = _expected_failures(
        lambda: run_train(load_train_config(config, overrides or []), data, out)
    )
    if metrics:
        typer.echo(json.dumps(metrics))


@app.command()
def analyze(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="timm name, NAME:pretrained, a checkpoint file, or NAME=CHECKPOINT.",
        ),
    ],
    data: Annotated[
        Path, typer.Option("--data", help="An infmix build folder, or a folder of images.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for attention.json/.csv/.png.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Pattern thresholds as key=value, e.g. global_nmi=0.03"),
    ] = None,
    images: Annotated[int, typer.Option("--images", help="Use the first N images.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward.")] = 16,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Input side (default: the model's).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    layer: Annotated[
        int | None, typer.Option("--layer", help="Distil this layer instead of the rule's.")
    ] = None,
) -> None:
    """Measure attention NMI and distance per layer and recommend the layer to distil."""
    from rich.console import Console

    from unip.analyze import print_report, run

    report = _expected_failures(
        lambda: run(model, data, out, images, batch_size, image_size, device, layer, overrides)
    )
    print_report(report, Console())


@app.command()
def export(
    ckpt: Annotated[
        Path, typer.Argument(help="A `unip train` checkpoint or an official UNIP .pth file.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for model.safetensors + config.json.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Student name, if the checkpoint lacks it.")
    ] = None,
    last_heads: Annotated[
        int | None, typer.Option("--last-heads", help="Last-block heads, if not recorded.")
    ] = None,
) -> None:
    """Export student weights as safetensors with a timm config (pretrained_cfg_overlay)."""
    from unip.export import export as run_export

    config = _expected_failures(lambda: run_export(ckpt, out, name=name, last_heads=last_heads))
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "architecture": config["architecture"],
                "model_args": config["model_args"],
            }
        )
    )


@app.command()
def finetune(
    config: Annotated[Path, typer.Argument(help="Recipe (pipelines/finetune/, linprobe/).")],
    data: Annotated[Path, typer.Option("--data", help="The segmentation dataset's root.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (created, or resumed).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. optim.iterations=100")
    ] = None,
) -> None:
    """Fine-tune (or linearly probe) a segmentation model; keeps the best checkpoint."""
    from rich.console import Console

    from unip.evaluate import print_table
    from unip.finetune import finetune as run_finetune
    from unip.segconfig import load_finetune_config

    result = _expected_failures(
        lambda: run_finetune(load_finetune_config(config, overrides or []), data, out)
    )
    if "mIoU" in result:
        print_table(result, Console(stderr=True))
    typer.echo(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))


@app.command(name="eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="A `unip finetune` .pt.")],
    data: Annotated[Path, typer.Option("--data", help="The segmentation dataset's root.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, predictions/.")],
    split: Annotated[str, typer.Option("--split", help="Split to evaluate.")] = "test",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Evaluate a fine-tuned checkpoint: sliding-window mIoU, per-class table, overlays."""
    from rich.console import Console

    from unip.evaluate import json_safe, print_table, run_eval

    result = _expected_failures(lambda: run_eval(checkpoint, data, split, out, device))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print_table(result, Console())
        summary = {"mIoU": result["mIoU"], "aAcc": result["aAcc"], "out": str(out)}
        typer.echo(json.dumps(json_safe(summary)))


@app.command(name="demo-segset")
def demo_segset(
    out: Annotated[Path, typer.Argument(help="Folder to write the generated set into.")],
    train: Annotated[int, typer.Option("--train", help="Training images.")] = 24,
    test: Annotated[int, typer.Option("--test", help="Test images.")] = 8,
) -> None:
    """Write a small generated thermal segmentation set (folder layout) for the demo."""
    from unip.data.segdemo import make_demo_segset

    classes = _expected_failures(lambda: make_demo_segset(out, n_train=train, n_test=test))
    typer.echo(json.dumps({"out": str(out), "classes": classes}))


def _expected_failures(fn):
    """Run fn; a UnipError prints one line and exits 1 (UNIP_DEBUG=1: the traceback)."""
    from unip.errors import UnipError

    try:
        return fn()
    except UnipError as e:
        if os.environ.get("UNIP_DEBUG") == "1":
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
