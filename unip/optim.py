"""AdamW with the paper's parameter groups and a per-iteration warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

EMBEDDING_NAMES = ("pos_embed", "cls_token", "reg_token", "mask_token")


def skips_decay(name: str, ndim: int) -> bool:
    """No weight decay on biases, norms (every 1-d parameter), position embeddings, tokens."""
    return ndim <= 1 or name.endswith(".bias") or any(k in name for k in EMBEDDING_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: none on biases, norms (every 1-d parameter) and
    position embeddings / class tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if skips_decay(name, p.ndim) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw(model: nn.Module, lr: float, weight_decay: float, betas, device: torch.device):
    fused = device.type == "cuda"  # one kernel per step instead of a loop over tensors
    groups = param_groups(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup from 0,
    then a half cosine down to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduler(optimizer, warmup: int, total: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, min_ratio)
    )
