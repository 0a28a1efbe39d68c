"""The segmentation recipe (`unip finetune`): validated config with the paper's defaults.

Same rules as the distillation config: YAML over these defaults, `key=value` over the YAML,
errors naming their key before any work starts. Iteration-based, as mmsegmentation runs it:
`optim.iterations` optimizer steps of `data.batch_size` images per device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from infmix.config import _Strict, read_yaml, validate
from infmix.errors import ConfigError
from unip.errors import UnipError


class SegDataConfig(_Strict):
    kind: Literal["soda", "mfnet", "scut", "folder"] = Field(description="Dataset layout.")
    classes: list[str] | str | None = Field(
        None, description="Class names, or a classes.txt under --data (folder sets only)."
    )
    label_map: dict[int, int] | None = Field(
        None, description="Raw label id -> class (255: ignore); default: the kind's own."
    )
    train_split: str = Field("train", description="Split trained on.")
    val_split: str = Field("test", description="Split evaluated during training.")
    crop: int = Field(512, ge=32, description="Random crop side (also the sliding window).")
    scale: tuple[int, int] = Field((2048, 512), description="Resize scale (long, short).")
    ratio_range: tuple[float, float] = Field((0.5, 2.0), description="Random rescale range.")
    cat_max_ratio: float = Field(0.75, gt=0, le=1, description="Max share of one class/crop.")
    batch_size: int = Field(8, ge=1, description="Images per device per step.")
    workers: int = Field(4, ge=0, description="DataLoader worker processes per device.")


class SegModelConfig(_Strict):
    kind: Literal["llfpn", "multilayer", "linear"] = Field(
        "llfpn", description="LL-FPN + UperNet, BEiT multi-layer FPN + UperNet, linear probe."
    )
    backbone: str = Field(
        "unip_vit_small_patch16", description="timm/unip name, NAME:pretrained, or a file."
    )
    checkpoint: Path | None = Field(None, description="Pre-trained backbone weights.")
    drop_path_rate: float = Field(0.1, ge=0, lt=1, description="Stochastic depth.")
    aux: bool = Field(True, description="Auxiliary FCN head on the stride-16 map (x0.4).")
    avg_non_ignore: bool = Field(
        False, description="CE mean over labelled pixels only (False: all pixels, as mmseg 0.x)."
    )


class SegOptimConfig(_Strict):
    """AdamW with layer-wise lr decay; linear warmup then poly decay, per iteration."""

    lr: float = Field(1e-4, gt=0, description="Peak lr of the heads (blocks: decayed).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(0.05, ge=0, description="Not on biases, norms, pos embed.")
    layer_decay: float = Field(0.85, gt=0, le=1, description="lr x decay^(depth - layer).")
    iterations: int = Field(14400, ge=1, description="Optimizer steps.")
    warmup_iters: int = Field(1500, ge=0, description="Linear warmup steps.")
    warmup_ratio: float = Field(1e-6, ge=0, le=1, description="Warmup starts at lr x this.")
    power: float = Field(1.0, gt=0, description="Poly decay power.")
    min_lr: float = Field(0.0, ge=0, description="lr at the end of the poly decay.")


class SegEvalConfig(_Strict):
    every: int = Field(1600, ge=1, description="Steps between evaluations (best kept).")
    mode: Literal["slide", "whole"] = Field("slide", description="Inference mode.")
    stride: int = Field(341, ge=1, description="Sliding-window stride.")
    overlays: int = Field(4, ge=0, description="Images written with colour overlays.")


class FinetuneConfig(_Strict):
    name: str = Field("unip-seg", description="Run name.")
    seed: int = Field(0, description="Seed of the heads' init and of the data order.")
    data: SegDataConfig
    model: SegModelConfig = SegModelConfig()
    optim: SegOptimConfig = SegOptimConfig()
    eval: SegEvalConfig = SegEvalConfig()
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if any.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on the CPU."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (the schedule keeps its length)."
    )
    checkpoint_every: int = Field(1600, ge=1, description="Steps between checkpoints.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept (best.pt apart).")
    log_every: int = Field(50, ge=1, description="Steps between log lines.")

    @model_validator(mode="after")
    def _warmup(self) -> FinetuneConfig:
        if self.optim.warmup_iters > self.optim.iterations:
            raise ValueError("optim.warmup_iters must not exceed optim.iterations")
        return self


# keys a resumed run may change: how long and how verbosely it runs, not what it computes
RESUMABLE_CHANGES = {"max_steps", "checkpoint_every", "keep_last", "log_every", "data.workers"}


def load_finetune_config(
    path: Path | str | None, overrides: list[str] | None = None, *, data: dict | None = None
) -> FinetuneConfig:
    try:
        raw = read_yaml(path) if data is None else data
        return validate(FinetuneConfig, raw, overrides)
    except ConfigError as e:
        raise UnipError(str(e)) from None
