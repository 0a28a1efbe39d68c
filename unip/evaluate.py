"""Segmentation evaluation: `unip eval`, and the periodic evaluation of `unip finetune`.

Each image is resized to the test scale (mmseg's Resize (2048, 512), keep ratio), predicted
by sliding 512 windows (stride 341, logits averaged over overlaps), and the logits resized
back to the label's original size before the argmax, so the metric is taken at the original
resolution. Under DDP every rank evaluates its share and the counts are summed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unip.data.loader import to_model_input
from unip.data.segaug import NORM, test_resize
from unip.data.segsets import SegSet
from unip.errors import UnipError
from unip.metrics import SegMetric


@torch.inference_mode()
def evaluate(model, segset: SegSet, cfg, device, d=None, overlays_to: Path | None = None) -> dict:
    """SegMetric over the whole split (mIoU, IoU, aAcc, ...) plus the class names."""
    from unip.infer import predict
    from unip.train import autocast

    rank, world = (d.rank, d.world) if d is not None else (0, 1)
    model.eval()
    metric = SegMetric(len(segset.classes))
    for i in range(rank, len(segset), world):
        image, label, name = segset[i]
        x = torch.from_numpy(test_resize(image, cfg.data.scale).copy())[None, None]
        x = to_model_input(x, device, *NORM)
        with autocast(cfg, device):
            pred = predict(
                model, x, len(segset.classes), cfg.eval.mode, cfg.data.crop, cfg.eval.stride,
                out_size=label.shape, batch_windows=4,
            )[0].cpu()  # fmt: skip
        metric.update(pred, torch.from_numpy(label.astype(np.int64)))
        if overlays_to is not None and i < cfg.eval.overlays:  # the split's first, on any rank
            write_overlay(overlays_to / "predictions" / f"{name}.png", image, pred, label, segset)
    metric.all_reduce()
    return {**metric.compute(), "classes": list(segset.classes), "images": len(segset)}


def colorize(ids: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    return table[ids]


def write_overlay(path: Path, image, pred: torch.Tensor, label, segset: SegSet) -> None:
    """The image, prediction over it and ground truth over it, side by side (ignored: gray)."""
    gray = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    panels = [gray]
    for ids in (pred.numpy().astype(np.uint8), label):
        blend = 0.5 * gray + 0.5 * colorize(ids, segset.palette)
        blend[ids == 255] = gray[ids == 255]
        panels.append(blend)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.concatenate(panels, axis=1).astype(np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def run_eval(ckpt: Path, data: Path, split: str, out: Path, device: str = "auto") -> dict:
    """`unip eval`: rebuild the model a fine-tuning checkpoint was trained as, load it
    strictly, evaluate `split`, write metrics.json and overlays under `out`. Under torchrun
    each rank evaluates its share of the split, the counts are summed and rank 0 writes."""
    from unip.checkpoint import load
    from unip.finetune import build_model, open_split
    from unip.segconfig import load_finetune_config
    from unip.train import init_distributed, pick_device, shutdown

    if not Path(ckpt).is_file():
        raise UnipError(f"--checkpoint {ckpt}: no such file")
    state = load(ckpt)
    config = state.get("config")
    if isinstance(config, dict) and "student" in config:
        raise UnipError(
            f"{ckpt} is a `unip train` (distillation) checkpoint: `unip eval` takes a fine-tuned "
            f"one; fine-tune it first (unip finetune CONFIG ... model.checkpoint={ckpt})"
        )
    if not isinstance(config, dict) or "data" not in config:
        raise UnipError(
            f"{ckpt} is not a `unip finetune` checkpoint (no fine-tuning config); a pre-trained "
            "backbone goes in model.checkpoint of `unip finetune`"
        )
    cfg = load_finetune_config(None, [f"device={device}"], data=config)
    segset = open_split(cfg, data, split)
    # the architecture the run recorded, without re-reading the pre-training weights (which
    # the fine-tuned state replaces, and which may be elsewhere or gone by now); a checkpoint
    # written before architectures were recorded rebuilds from model.checkpoint as it did
    model = build_model(cfg, len(segset.classes), arch=state.get("backbone_arch"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UnipError(f"{ckpt} does not match the model its config builds: {e}") from None
    d = init_distributed(cfg)
    dev = pick_device(cfg, d)
    result = evaluate(model.to(dev), segset, cfg, dev, d, Path(out))
    result.update(checkpoint=str(ckpt), split=split, step=state.get("step"))
    out = Path(out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".metrics.json.tmp"
        tmp.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
        os.replace(tmp, out / "metrics.json")
    shutdown(None, d)
    return result


def json_safe(value):
    """NaN (a class absent from predictions and labels) as JSON null, which strict parsers
    accept; everything else as it is."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def print_table(result: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"mIoU {result['mIoU']:.2f}  aAcc {result['aAcc']:.2f}")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Acc", justify="right")
    for name, iou, acc in zip(result["classes"], result["IoU"], result["Acc"], strict=True):
        table.add_row(name, _pct(iou), _pct(acc))
    console.print(table)


def _pct(v: float) -> str:
    return "-" if v != v else f"{v:.2f}"  # NaN: absent from predictions and labels
