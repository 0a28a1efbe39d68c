"""The NMI-HAD distillation loss: KL divergence between teacher and student attention maps.

For every image, head and query row (cls token included) the teacher's and the student's
pre-softmax logits become distributions over keys; the loss is KL(teacher || student) averaged
over batch, heads and queries. Always float32 (inputs cast, autocast off) and via log_softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over (B, H, N) of KL(softmax(teacher) || softmax(student)) over the last axis.

    Both inputs are (B, H, N, N) pre-softmax logits; only the student needs gradients.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits "
            f"{tuple(student_logits.shape)} differ: the student's last_heads and image size "
            "must match the teacher's distilled layer"
        )
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_t = F.log_softmax(teacher_logits.detach().float(), dim=-1)
        log_s = F.log_softmax(student_logits.float(), dim=-1)
        return (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()
