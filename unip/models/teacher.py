"""The frozen teacher: a plain timm ViT cut at the distilled layer, returning its q.k logits.

Blocks before the distilled layer run exactly as timm runs them (fused scaled-dot-product
attention); the distilled layer computes only norm1 -> q, k (a slice of the qkv weight, so the
value path and the MLP are never computed) and the logits q.k^T * d^-0.5 explicitly, with the
matmul in float32 even under autocast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from unip.errors import UnipError
from unip.models.checkpoints import check_supported, load_vit, parse_spec


def embed_tokens(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Tokens entering the first block, as timm's forward_features builds them (patch embed,
    cls/register tokens, position embedding incl. dynamic size, patch dropout, pre-norm)."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def qk_logits(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Pre-softmax attention logits (B, heads, N, N) in float32 of `block` for tokens `x`."""
    attn = block.attn
    h = block.norm1(x)
    batch, tokens, _ = h.shape
    n = 2 * attn.attn_dim  # rows of the qkv weight producing q and k
    bias = attn.qkv.bias[:n] if attn.qkv.bias is not None else None
    qk = F.linear(h, attn.qkv.weight[:n], bias)
    qk = qk.reshape(batch, tokens, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qk[0]), attn.k_norm(qk[1])
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.matmul(q.float(), k.float().transpose(-2, -1)) * attn.scale


class Teacher(nn.Module):
    """A frozen timm ViT truncated after `layer` (1-based: layer 18 of 24 is blocks[17]).

    forward(x) takes normalised images (B, 3, H, W) and returns that layer's pre-softmax logits
    (B, heads, N, N) in float32, cls token included. Always in eval mode, without gradients.
    """

    def __init__(self, model: VisionTransformer, layer: int):
        super().__init__()
        check_supported(model)
        depth = len(model.blocks)
        if not 1 <= layer <= depth:
            raise UnipError(f"teacher layer must be in 1..{depth} (1-based), got {layer}")
        model.blocks = model.blocks[:layer]  # later blocks are never run: free them
        model.norm = model.fc_norm = model.head = nn.Identity()
        model.attn_pool = None
        self.model = model
        self.layer = layer
        self.depth = depth
        self.num_heads = model.blocks[-1].attn.num_heads
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Teacher:
        """The teacher stays in eval mode (no dropout, drop path or patch dropout)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = embed_tokens(self.model, x)
        for blk in self.model.blocks[:-1]:
            x = blk(x)
        return qk_logits(self.model.blocks[-1], x)


def create_teacher(
    spec: str | None,
    checkpoint: Path | None = None,
    layer: int | None = None,
    pretrained: bool = False,
    **kw: Any,
) -> Teacher:
    """A Teacher from a model SPEC (see parse_spec) or a timm name plus checkpoint/pretrained.

    `layer` (1-based) is required; extra keyword arguments go to load_vit (e.g. img_size).
    """
    if layer is None:
        raise UnipError("create_teacher needs the distilled layer (1-based), e.g. layer=18")
    name = None
    if spec is not None:
        name, spec_ckpt, spec_pretrained = parse_spec(spec)
        checkpoint = checkpoint or spec_ckpt
        pretrained = pretrained or spec_pretrained
    return Teacher(load_vit(name, checkpoint, pretrained=pretrained, **kw), layer)
