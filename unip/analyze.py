"""`unip analyze`: a teacher's attention pattern layer by layer, and the layer to distil.

The first N images (an infmix build in shard order, or an image folder in path order) go
through the model batch by batch; each layer's NMI and distance are accumulated as soon as its
map exists, so no attention map outlives its layer. Writes attention.json / .csv / .png, each
atomically, and prints a table. Images are read as the training stream sees them: grayscale
replicated to 3 channels, normalised with the InfMix mean and std.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from infmix import atomic
from infmix.config import validate
from infmix.errors import InfmixError
from unip.analysis import (
    PatternConfig,
    attention_distance,
    attention_nmi,
    classify_layers,
    layer_attention,
    pick_layer,
    token_grid,
    uniform_distance,
)
from unip.data.streams import IMAGE_EXTS, list_images
from unip.errors import UnipError
from unip.models import load_vit, parse_spec

MEAN, STD = 0.3801, 0.1871  # InfMix grayscale statistics (UNIP)
IMAGE_SUFFIXES = tuple(f".{e}" for e in IMAGE_EXTS)
COLORS = {"local": "tab:blue", "hybrid": "tab:green", "global": "tab:orange"}


def pattern_config(overrides: list[str] | None = None) -> PatternConfig:
    """Default thresholds with `key=value` overrides (e.g. `global_nmi=0.03`)."""
    try:
        return validate(PatternConfig, {}, overrides or [])
    except InfmixError as e:
        raise UnipError(str(e)) from None


def encoded_images(path: Path, skipped: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, encoded bytes) in a fixed order: shard by shard as `_info.json` lists them for an
    infmix build, else every image file under `path` sorted by relative path. A shard that
    cannot be read (from where it breaks) goes to `skipped`."""
    shards = shard_files(path)
    if shards is not None:
        for shard in shards:
            try:
                with tarfile.open(shard) as tar:
                    for m in tar:
                        if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                            yield m.name, tar.extractfile(m).read()
            except (tarfile.TarError, OSError) as e:
                skipped.append(f"{shard} ({e})")
        return
    for p in image_files(path):
        yield str(p), p.read_bytes()


def shard_files(path: Path) -> list[Path] | None:
    """The shards of an infmix build in `_info.json` order; None if `path` is not a build."""
    info = path / "_info.json"
    if not info.is_file():
        return None
    try:
        names = json.loads(info.read_text())["splits"]["train"]["filenames"]
    except (ValueError, KeyError, TypeError) as e:
        raise UnipError(
            f"{info}: not an infmix _info.json (no splits.train.filenames: {e})"
        ) from None
    missing = [n for n in names if not (path / n).is_file()]
    if missing or not names:
        raise UnipError(f"{info} lists no shards, or shards that are missing: {missing[:3]}")
    return [path / n for n in names]


def image_files(path: Path) -> list[Path]:
    return sorted(list_images(path), key=lambda p: p.relative_to(path).as_posix())


def to_gray(img: Image.Image) -> Image.Image:
    """8-bit grayscale; 16-bit and float images are stretched from their own min to max."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.round().astype(np.uint8))
    return img.convert("L")


def preprocess(data: bytes, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) float: shorter side resized (bicubic) to cover `size`, centre-cropped."""
    img = to_gray(Image.open(io.BytesIO(data)))
    h, w = size
    scale = max(h / img.height, w / img.width)
    rw, rh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    img = img.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    img = img.crop((left, top, left + w, top + h))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return ((x - MEAN) / STD).expand(3, h, w)


def batches(
    path: Path, limit: int, batch_size: int, size: tuple[int, int], skipped: list[str]
) -> Iterator[torch.Tensor]:
    """Batches of the first `limit` decodable images; undecodable files go to `skipped`."""
    batch: list[torch.Tensor] = []
    taken = 0
    for name, data in encoded_images(path, skipped):
        try:
            batch.append(preprocess(data, size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped.append(name)
            continue
        taken += 1
        if len(batch) == batch_size or taken == limit:
            yield torch.stack(batch)
            batch = []
        if taken == limit:
            return
    if batch:
        yield torch.stack(batch)


def pick_device(device: str) -> torch.device:
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise UnipError(f"--device {device!r}: expected auto, cpu or cuda")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UnipError("--device cuda: torch sees no CUDA device")
    return torch.device(device)


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} img/s" if speed else "- img/s", style="progress.data.speed")


def measure(model, path: Path, images: int, batch_size: int, device, console: Console) -> dict:
    """Per-layer sums of NMI and distance (per head, weighted by images) over the images."""
    size = tuple(model.patch_embed.img_size)
    prefix = model.num_prefix_tokens
    nmi: dict[int, torch.Tensor] = {}
    dist: dict[int, torch.Tensor] = {}
    skipped: list[str] = []
    seen = 0
    bar = Progress(
        TextColumn("analyzing"), BarColumn(), MofNCompleteColumn(), _Rate(), console=console
    )
    with bar:
        task = bar.add_task("analyzing", total=images)
        for x in batches(path, images, batch_size, size, skipped):
            x = x.to(device)
            grid, patch = token_grid(model, x)
            for layer, attn in layer_attention(model, x):
                n = attention_nmi(attn, num_prefix_tokens=prefix) * len(x)
                d = attention_distance(attn, grid, patch, num_prefix_tokens=prefix) * len(x)
                nmi[layer] = nmi.get(layer, 0) + n.cpu()
                dist[layer] = dist.get(layer, 0) + d.cpu()
            seen += len(x)
            bar.update(task, advance=len(x))
        bar.update(task, total=seen)  # fewer images than asked for: the bar ends full
    if not seen:
        raise UnipError(f"no readable images in {path}: all {len(skipped)} failed to decode")
    grid = (size[0] // patch[0], size[1] // patch[1])
    return dict(nmi=nmi, dist=dist, seen=seen, skipped=skipped, size=size, grid=grid, patch=patch)


def summarise(m: dict, cfg: PatternConfig, layer: int | None) -> dict:
    """The report: per-layer rows, patterns, the rule's layer and the one used."""
    n = m["seen"]
    uniform = uniform_distance(m["grid"], m["patch"])
    rows = []
    for i in sorted(m["nmi"]):
        nmi, dist = (m["nmi"][i] / n).tolist(), (m["dist"][i] / n).tolist()
        mean_d = float(np.mean(dist))
        rows.append(
            dict(
                layer=i,
                nmi=float(np.mean(nmi)),
                nmi_heads=nmi,
                distance_px=mean_d,
                distance_heads_px=dist,
                distance_relative=mean_d / uniform,
            )
        )
    patterns = classify_layers(
        [r["nmi"] for r in rows], [r["distance_relative"] for r in rows], cfg
    )
    for r, p in zip(rows, patterns, strict=True):
        r["pattern"] = p
    rule_layer, reason = pick_layer([r["nmi"] for r in rows], patterns, cfg)
    return dict(
        images=n,
        skipped=len(m["skipped"]),
        image_size=list(m["size"]),
        patch_size=list(m["patch"]),
        grid=list(m["grid"]),
        uniform_distance_px=uniform,
        thresholds=cfg.model_dump(),
        recommended_layer=rule_layer,
        rule=reason,
        layer=layer or rule_layer,
        layer_from_option=layer is not None,
        layers=rows,
    )


def run(
    spec: str,
    data: Path,
    out: Path,
    images: int = 64,
    batch_size: int = 16,
    image_size: int | None = None,
    device: str = "auto",
    layer: int | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> dict:
    """Analyze `spec` on the first `images` images of `data`; write the reports into `out`."""
    console = console or Console(stderr=True)
    cfg = pattern_config(overrides)
    if images < 1:
        raise UnipError(f"--images must be at least 1, got {images}")
    if batch_size < 1:
        raise UnipError(f"--batch-size must be at least 1, got {batch_size}")
    if not data.is_dir():
        raise UnipError(f"--data {data}: not a folder (an infmix build or a folder of images)")
    if shard_files(data) is None and not image_files(data):
        raise UnipError(
            f"no images in {data}: expected an infmix build (with _info.json) or image files "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    name, checkpoint, pretrained = parse_spec(spec)
    model = load_vit(
        name, checkpoint, pretrained, **({"img_size": image_size} if image_size else {})
    )
    depth = len(model.blocks)
    if layer is not None and not 1 <= layer <= depth:
        raise UnipError(f"--layer {layer}: the model has layers 1..{depth}")
    dev = pick_device(device)
    model.eval().to(dev)
    m = measure(model, data, images, batch_size, dev, console)
    if m["skipped"]:
        console.print(f"skipped {len(m['skipped'])} unreadable file(s), e.g. {m['skipped'][0]}")
    report = dict(model=spec, data=str(data), device=str(dev), batch_size=batch_size)
    report["images_requested"] = images
    report.update(summarise(m, cfg, layer))
    write_reports(report, out)
    return report


def write_reports(report: dict, out: Path) -> None:
    """Everything is rendered before anything is written; each file lands by rename."""
    table, png = to_csv(report), plot(report)
    atomic.write_json(out / "attention.json", report)
    atomic.write_text(out / "attention.csv", table)
    atomic.write_bytes(out / "attention.png", png)


def to_csv(report: dict) -> str:
    heads = len(report["layers"][0]["nmi_heads"])
    cols = ["layer", "pattern", "nmi", "distance_px", "distance_relative"]
    cols += [f"nmi_h{h}" for h in range(heads)] + [f"distance_px_h{h}" for h in range(heads)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in report["layers"]:
        w.writerow([r[c] for c in cols[:5]] + r["nmi_heads"] + r["distance_heads_px"])
    return buf.getvalue()


def plot(report: dict) -> bytes:
    """PNG: NMI and distance against depth, each head faint, pattern bands shaded."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.patches import Patch

    rows = report["layers"]
    x = [r["layer"] for r in rows]
    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    ax_n, ax_d = fig.subplots(2, 1, sharex=True)
    for ax, key, heads, label in (
        (ax_n, "nmi", "nmi_heads", "NMI (query; key)"),
        (ax_d, "distance_px", "distance_heads_px", "attention distance (px)"),
    ):
        for r in rows:
            ax.axvspan(
                r["layer"] - 0.5, r["layer"] + 0.5, color=COLORS[r["pattern"]], alpha=0.15, lw=0
            )
            ax.scatter([r["layer"]] * len(r[heads]), r[heads], s=6, color="0.5", alpha=0.6)
        ax.plot(x, [r[key] for r in rows], "o-", color="black", lw=1.5, ms=4)
        ax.axvline(report["layer"], color="tab:red", ls="--", lw=1.5)
        if report["layer"] != report["recommended_layer"]:
            ax.axvline(report["recommended_layer"], color="0.3", ls=":", lw=1.5)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_n.axhline(report["thresholds"]["global_nmi"], color="tab:orange", ls=":", lw=1)
    ax_n.axhline(report["thresholds"]["local_nmi"], color="tab:blue", ls=":", lw=1)
    ax_d.axhline(report["uniform_distance_px"], color="0.4", ls=":", lw=1)
    ax_d.set_xlabel("layer")
    ax_d.set_xticks(x)
    handles = [Patch(color=c, alpha=0.3, label=p) for p, c in COLORS.items()]
    handles.append(Patch(color="tab:red", label=f"distil layer {report['layer']}"))
    if report["layer"] != report["recommended_layer"]:
        handles.append(Patch(color="0.3", label=f"rule: layer {report['recommended_layer']}"))
    ax_n.legend(handles=handles, loc="upper right", fontsize=8)
    ax_n.set_title(f"{report['model']}: {report['images']} images")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def print_report(report: dict, console: Console) -> None:
    table = Table("layer", "pattern", "NMI", "distance px", "rel. distance")
    for r in report["layers"]:
        mark = " *" if r["layer"] == report["layer"] else ""
        table.add_row(
            f"{r['layer']}{mark}",
            r["pattern"],
            f"{r['nmi']:.4f}",
            f"{r['distance_px']:.1f}",
            f"{r['distance_relative']:.3f}",
        )
    console.print(table)
    if report["layer_from_option"] and report["layer"] != report["recommended_layer"]:
        console.print(
            f"recommended distillation layer: {report['layer']} (from --layer; the rule picks "
            f"{report['recommended_layer']}: {report['rule']})",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"recommended distillation layer: {report['layer']} ({report['rule']})",
            highlight=False,
            soft_wrap=True,
        )
