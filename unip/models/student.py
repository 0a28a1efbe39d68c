"""UNIP students registered with timm: unip_vit_{tiny,small,base}_patch16.

A timm VisionTransformer with a fixed 2-D sin-cos position embedding (a buffer, as MAE builds
it, zeros in the cls slot) and a last block whose head count matches the teacher's distilled
layer (`last_heads`). `model(x)` returns that block's pre-softmax logits only (its value path
and MLP are skipped); `forward_features(x)` runs the full last block, for fine-tuning.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from unip.errors import UnipError
from unip.models.teacher import embed_tokens, qk_logits

INFRARED_MEAN = (0.3801, 0.3801, 0.3801)
INFRARED_STD = (0.1871, 0.1871, 0.1871)
STUDENTS = {
    "unip_vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3),
    "unip_vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6),
    "unip_vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12),
}
"""Registered student names and their widths, depths and regular head counts."""


def sincos_pos_embed(dim: int, grid: tuple[int, int], prefix_tokens: int = 1) -> torch.Tensor:
    """(1, prefix + h*w, dim) float32, MAE's get_2d_sincos_pos_embed (computed in float64): the
    first half of the channels encodes the column, the second the row; prefix slots are zero."""
    if dim % 4:
        raise UnipError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([encode(cols), encode(rows)], dim=1)
    emb = torch.cat([torch.zeros(prefix_tokens, dim, dtype=torch.float64), emb])
    return emb.float().unsqueeze(0)


class UnipViT(VisionTransformer):
    """ViT student: patch 16, qkv bias, LayerNorm eps 1e-6, fixed sin-cos position embedding,
    `last_heads` heads in the last block (default: the regular head count)."""

    fixed_pos_embed = True  # load_vit regenerates it for another grid instead of resampling

    def __init__(
        self,
        *,
        last_heads: int | None = None,
        embed_dim: int = 384,
        num_heads: int = 6,
        num_classes: int = 0,
        **kw: Any,
    ):
        last_heads = last_heads or num_heads
        if embed_dim % last_heads:
            raise UnipError(
                f"last_heads={last_heads} does not divide the width {embed_dim} "
                f"(head_dim = {embed_dim} / last_heads must be an integer)"
            )
        kw.setdefault("norm_layer", partial(nn.LayerNorm, eps=1e-6))
        kw.update(qkv_bias=True, weight_init="skip")
        super().__init__(embed_dim=embed_dim, num_heads=num_heads, num_classes=num_classes, **kw)
        self.last_heads = last_heads
        self.blocks[-1].attn = Attention(
            embed_dim,
            num_heads=last_heads,
            qkv_bias=True,
            attn_drop=kw.get("attn_drop_rate", 0.0),
            proj_drop=kw.get("proj_drop_rate", 0.0),
        )
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        del self.pos_embed
        pos = sincos_pos_embed(embed_dim, self.patch_embed.grid_size, prefix)
        self.register_buffer("pos_embed", pos, persistent=True)
        self._init_mae()

    def _init_mae(self) -> None:
        """MAE's initialisation (as the UNIP students use): xavier-uniform linears and patch
        projection, zero biases, unit norms, cls token N(0, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def unused_in_distillation(self) -> list[str]:
        """Parameters that `forward` never touches (the last block's projection, MLP and norm2,
        the final norms and head): freeze them while distilling, or DDP needs
        find_unused_parameters=True. The value rows of the last qkv get zero gradients."""
        last = f"blocks.{len(self.blocks) - 1}."
        skip = (f"{last}attn.proj.", f"{last}norm2.", f"{last}mlp.", f"{last}ls", "norm.")
        skip += ("fc_norm.", "head.", "attn_pool.")
        return [n for n, _ in self.named_parameters() if n.startswith(skip)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax logits (B, last_heads, N, N) float32 of the last block, cls included."""
        x = embed_tokens(self, x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks[:-1], x)
        else:
            for blk in self.blocks[:-1]:
                x = blk(x)
        return qk_logits(self.blocks[-1], x)


def _filter_fn(state: dict[str, torch.Tensor], model: UnipViT) -> dict[str, torch.Tensor]:
    """Fine-tuning at another image size: the fixed position embedding is regenerated."""
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state = {**state, "pos_embed": model.pos_embed.detach().clone()}
    return state


def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": INFRARED_MEAN,
        "std": INFRARED_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kw,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in STUDENTS})


def _create(variant: str, pretrained: bool, **kw: Any) -> UnipViT:
    args = {"patch_size": 16, "mlp_ratio": 4.0, **STUDENTS[variant], **kw}
    return build_model_with_cfg(
        UnipViT, variant, pretrained, pretrained_filter_fn=_filter_fn, **args
    )


@register_model
def unip_vit_tiny_patch16(pretrained: bool = False, **kw: Any) -> UnipViT:
    """UNIP-T: width 192, depth 12, 3 heads (the last block: `last_heads`)."""
    return _create("unip_vit_tiny_patch16", pretrained, **kw)


@register_model
def unip_vit_small_patch16(pretrained: bool = False, **kw: Any) -> UnipViT:
    """UNIP-S: width 384, depth 12, 6 heads (the last block: `last_heads`)."""
    return _create("unip_vit_small_patch16", pretrained, **kw)


@register_model
def unip_vit_base_patch16(pretrained: bool = False, **kw: Any) -> UnipViT:
    """UNIP-B: width 768, depth 12, 12 heads (the last block: `last_heads`)."""
    return _create("unip_vit_base_patch16", pretrained, **kw)


def create_student(name: str, last_heads: int | None = None, **kw: Any) -> UnipViT:
    """A registered student by name (e.g. `unip_vit_small_patch16`, last_heads=16)."""
    if name not in STUDENTS:
        raise UnipError(f"unknown student {name!r}: choose one of {', '.join(STUDENTS)}")
    import timm

    return timm.create_model(name, last_heads=last_heads, **kw)
