"""The NMI-HAD distillation recipe: validated config with defaults from the paper.

Same rules as the corpus config: YAML on top of the defaults here, `key=value` overrides on
top of that, and every error names its key before any work starts. `pipelines/distill/` holds
the paper's recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator

from infmix.config import _Strict, read_yaml, validate
from infmix.errors import ConfigError
from unip.errors import UnipError

STUDENTS = ("unip_vit_tiny_patch16", "unip_vit_small_patch16", "unip_vit_base_patch16")


class TeacherConfig(_Strict):
    """The frozen RGB teacher and the layer whose query-key logits are distilled."""

    model: str = Field(description="timm ViT name, e.g. vit_large_patch16_224.")
    checkpoint: Path | None = Field(None, description="Local weights (MAE, DINO, iBOT, DeiT...).")
    pretrained: bool = Field(False, description="Use timm's pretrained weights (downloads).")
    layer: int = Field(ge=1, description="Distilled layer, 1-based (MAE-L: 18 of 24).")


class StudentConfig(_Strict):
    model: Literal[STUDENTS] = Field("unip_vit_small_patch16", description="Student ViT.")
    last_heads: int | None = Field(
        None, ge=1, description="Heads of the last block (default: the teacher's)."
    )


class DataConfig(_Strict):
    image_size: int = Field(224, ge=16, description="RandomResizedCrop output side.")
    scale: tuple[float, float] = Field((0.2, 1.0), description="RandomResizedCrop area range.")
    batch_size: int = Field(64, ge=1, description="Images per device per micro-step.")
    workers: int = Field(8, ge=0, description="DataLoader worker processes per device.")
    shuffle_buffer: int = Field(2000, ge=1, description="Samples in the shuffle buffer.")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"must satisfy 0 < low <= high <= 1, got {list(v)}")
        return v


class OptimConfig(_Strict):
    """AdamW with per-iteration linear warmup then cosine decay."""

    batch_size: int = Field(
        4096, ge=1, description="Effective batch: devices x micro-batch x accumulation."
    )
    base_lr: float = Field(1.5e-4, gt=0, description="lr = base_lr x batch_size / 256.")
    min_lr: float = Field(0.0, ge=0, description="lr at the end of the cosine.")
    weight_decay: float = Field(0.05, ge=0, description="Not on biases, norms, pos embed.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    epochs: int = Field(100, ge=1, description="Passes over the corpus.")
    warmup_epochs: float = Field(5, ge=0, description="Linear warmup length.")
    clip_grad: float | None = Field(None, gt=0, description="Gradient norm clip (null: none).")


class TrainConfig(_Strict):
    name: str = Field("unip", description="Run name (TensorBoard, checkpoints).")
    seed: int = Field(0, description="Seed of the weights' init and of the data stream.")
    teacher: TeacherConfig
    student: StudentConfig = StudentConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if any.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on the CPU."
    )
    compile: bool = Field(False, description="torch.compile the student and the teacher.")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps (the schedule keeps its full length).",
    )
    checkpoint_every: int = Field(1000, ge=1, description="Optimizer steps between checkpoints.")
    keep_last: int = Field(3, ge=1, description="Checkpoints kept.")
    log_every: int = Field(20, ge=1, description="Optimizer steps between log lines.")


# keys a resumed run may change: how long and how verbosely it runs, not what it computes
# (not data.workers: each worker reads its own share of the shards)
RESUMABLE_CHANGES = {"max_steps", "checkpoint_every", "keep_last", "log_every"}


def load_train_config(
    path: Path | str | None, overrides: list[str] | None = None, *, data: dict | None = None
) -> TrainConfig:
    try:
        raw = read_yaml(path) if data is None else data
        return validate(TrainConfig, raw, overrides)
    except ConfigError as e:
        raise UnipError(str(e)) from None


def dump(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b, key = old.get(k), new.get(k), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, key + ".")
        elif a != b:
            out.append(key)
    return out
