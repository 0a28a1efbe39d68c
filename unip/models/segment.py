"""ViT segmenters as in BEiT/UNIP: a ViT backbone, an FPN neck, UPerHead (+ auxiliary FCNHead),
and the frozen linear probe.

The backbone takes any input size: the position embedding is rebuilt on the fly for each grid
(a UNIP student's fixed sin-cos regenerated exactly, a learned one resampled bicubically as timm
does), and sides that are not a multiple of the patch are zero-padded bottom/right (mmseg's
'corner' padding), so sliding windows smaller than the crop need no second model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unip.errors import UnipError
from unip.models.checkpoints import check_supported, create_vit, load_vit, parse_spec
from unip.models.seg_heads import FCNHead, LastLayerFPN, MultiLayerFPN, UperHead
from unip.models.student import sincos_pos_embed

AUX_WEIGHT = 0.4
"""Weight of the auxiliary FCN head's cross-entropy (mmseg's UperNet configs)."""
AUX_CHANNELS = 256
SegOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


def default_out_indices(depth: int) -> tuple[int, int, int, int]:
    """0-based blocks at 1/3, 1/2, 2/3 and all of the depth: (3, 5, 7, 11) for 12 blocks,
    (7, 11, 15, 23) for 24, as BEiT's configs pick them."""
    picks = (depth // 3 - 1, depth // 2 - 1, 2 * depth // 3 - 1, depth - 1)
    return tuple(max(0, i) for i in picks)


class ViTBackbone(nn.Module):
    """Patch-token maps (B, D, ceil(H/p), ceil(W/p)) of the blocks in `out_indices` (0-based).

    Blocks are taken as they come out (no final norm, as the BEiT/UNIP backbones); blocks after
    the last requested one, the final norm and the head are removed, so every parameter left
    gets a gradient (DDP needs no find_unused_parameters). A UNIP student's `forward` returns
    distillation logits, so this never calls the model's forward, only its layers.
    """

    def __init__(self, model: VisionTransformer, out_indices: Sequence[int]):
        super().__init__()
        check_supported(model)
        depth = len(model.blocks)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or not all(0 <= i < depth for i in out_indices):
            raise UnipError(
                f"out_indices must be 0-based blocks in 0..{depth - 1}, got {out_indices}"
            )
        model.blocks = model.blocks[: max(out_indices) + 1]
        model.norm = model.fc_norm = model.head = model.head_drop = nn.Identity()
        model.attn_pool = None
        self.model = model
        self.arch = getattr(model, "unip_arch", None)  # how to rebuild it without its weights
        self.out_indices = out_indices
        self.embed_dim = model.embed_dim
        self.patch_size = model.patch_embed.patch_size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pad(x)
        grid = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        tokens = self.embed(x)
        prefix = self.model.num_prefix_tokens
        maps = {}
        for i, blk in enumerate(self.model.blocks):
            tokens = blk(tokens)
            if i in self.out_indices:
                patches = tokens[:, prefix:].transpose(1, 2)
                maps[i] = patches.reshape(x.shape[0], -1, *grid).contiguous()
        return [maps[i] for i in self.out_indices]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the bottom/right up to a multiple of the patch (a no-op when it is one)."""
        (h, w), (ph, pw) = x.shape[-2:], self.patch_size
        return F.pad(x, (0, -w % pw, 0, -h % ph)) if h % ph or w % pw else x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the first block, as timm's forward_features builds them, but with the
        position embedding of this input's grid."""
        m = self.model
        patches = m.patch_embed.proj(x)
        grid = patches.shape[-2:]
        t = m.patch_embed.norm(patches.flatten(2).transpose(1, 2))
        prefix = [
            tok.expand(t.shape[0], -1, -1) for tok in (m.cls_token, m.reg_token) if tok is not None
        ]
        if m.pos_embed is None:
            t = torch.cat([*prefix, t], dim=1)
        elif m.no_embed_class:
            t = torch.cat([*prefix, t + self.pos_embed(grid)], dim=1)
        else:
            t = torch.cat([*prefix, t], dim=1) + self.pos_embed(grid)
        t = m.patch_drop(m.pos_drop(t))
        return m.norm_pre(t)

    def pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        """The model's position embedding for a (rows, cols) patch grid."""
        m = self.model
        grid = tuple(grid)
        if grid == tuple(m.patch_embed.grid_size):
            return m.pos_embed
        prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        if getattr(m, "fixed_pos_embed", False):  # a function of position: regenerate exactly
            pos = sincos_pos_embed(m.embed_dim, grid, prefix)
            return pos.to(device=m.pos_embed.device, dtype=m.pos_embed.dtype)
        return resample_abs_pos_embed(
            m.pos_embed,
            new_size=list(grid),
            old_size=m.patch_embed.grid_size,
            num_prefix_tokens=prefix,
        )


def build_backbone(
    spec: str,
    checkpoint: Path | None = None,
    img_size: int = 512,
    out_indices: Sequence[int] | None = None,
    drop_path_rate: float = 0.0,
) -> ViTBackbone:
    """A ViTBackbone from a model SPEC (timm/unip name, `NAME:pretrained`, a checkpoint path or
    NAME=CHECKPOINT; see parse_spec) built at `img_size` (the training crop): a checkpoint's
    position embedding is resampled (learned) or regenerated (UNIP sin-cos) for that crop.
    `out_indices` defaults to the last block."""
    model = _load(spec, checkpoint, img_size, drop_path_rate, None)
    return ViTBackbone(model, out_indices if out_indices is not None else (len(model.blocks) - 1,))


def _load(
    spec: str, checkpoint: Path | None, img_size: int, drop_path_rate: float, arch: dict | None
) -> VisionTransformer:
    if arch is not None:  # a fine-tuned model's recorded architecture: its weights come later
        return create_vit({**arch, "kwargs": {**arch["kwargs"], "drop_path_rate": drop_path_rate}})
    name, spec_ckpt, pretrained = parse_spec(spec)
    return load_vit(
        name,
        checkpoint or spec_ckpt,
        pretrained=pretrained,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
    )


def valid_region(logits: torch.Tensor, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Logits at `stride` cut to the cells that overlap the unpadded input x (ceil(H/stride))."""
    h, w = -(-x.shape[-2] // stride), -(-x.shape[-1] // stride)
    return logits[..., :h, :w]


def cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    ignore_index: int = 255,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Pixel CE, logits bilinearly upsampled to the label (align_corners=False, as mmseg).

    The mean is over every pixel, ignored ones adding 0, as mmseg 0.x (the UNIP and BEiT code)
    reduces it; `avg_non_ignore` divides by the labelled pixels instead (mmseg's option of that
    name). 0 when every pixel is ignored."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    label = label.long()
    total = F.cross_entropy(logits.float(), label, ignore_index=ignore_index, reduction="sum")
    count = (label != ignore_index).sum().clamp(min=1) if avg_non_ignore else label.numel()
    return total / count


def seg_loss(
    output: SegOutput,
    label: torch.Tensor,
    ignore_index: int = 255,
    aux_weight: float = AUX_WEIGHT,
    avg_non_ignore: bool = False,
) -> dict[str, torch.Tensor]:
    """{"loss": decode CE + aux_weight * aux CE, "loss_decode", and "loss_aux" with an aux head}
    from a model's output (a logits tensor, or the (logits, aux) pair of training mode)."""
    logits, aux = output if isinstance(output, tuple) else (output, None)
    losses = {"loss_decode": cross_entropy(logits, label, ignore_index, avg_non_ignore)}
    losses["loss"] = losses["loss_decode"]
    if aux is not None:
        losses["loss_aux"] = cross_entropy(aux, label, ignore_index, avg_non_ignore)
        losses["loss"] = losses["loss"] + aux_weight * losses["loss_aux"]
    return losses


class Segmenter(nn.Module):
    """Backbone -> FPN neck -> UPerHead, with an optional FCN auxiliary head on the stride-16 map.

    forward(x): logits (B, K, ceil(H/4), ceil(W/4)) in eval mode; in training mode the pair (logits,
    aux_logits or None). One forward serves both, so a DDP-wrapped model's gradients sync
    (a separate method would bypass DDP's forward hooks); seg_loss takes either output.
    """

    def __init__(self, backbone: ViTBackbone, neck: nn.Module, num_classes: int, aux: bool = True):
        super().__init__()
        dim = backbone.embed_dim
        self.backbone = backbone
        self.neck = neck
        self.decode_head = UperHead([dim] * 4, dim, num_classes)
        self.aux_head = FCNHead(dim, num_classes, channels=AUX_CHANNELS) if aux else None

    def forward(self, x: torch.Tensor) -> SegOutput:
        levels = self.neck(self.backbone(x))
        logits = valid_region(self.decode_head(levels), x, 4)
        if not self.training:
            return logits
        aux = self.aux_head(levels[2]) if self.aux_head is not None else None
        return logits, valid_region(aux, x, 16) if aux is not None else None

    def loss(
        self, x: torch.Tensor, label: torch.Tensor, ignore_index: int = 255
    ) -> dict[str, torch.Tensor]:
        """seg_loss of this model on (x, label), for single-process use (not through DDP)."""
        return seg_loss(self(x), label, ignore_index)


class LinearProbe(nn.Module):
    """Frozen backbone (eval mode, no gradients), its block maps concatenated on channels ->
    BatchNorm2d -> 1x1 conv: logits at stride 16. Same forward/loss API as Segmenter (aux None)."""

    def __init__(self, backbone: ViTBackbone, num_classes: int):
        super().__init__()
        channels = backbone.embed_dim * len(backbone.out_indices)
        self.backbone = backbone.requires_grad_(False).eval()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def train(self, mode: bool = True) -> LinearProbe:
        """Only the BN and classifier train; the backbone stays in eval mode (no drop path)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> SegOutput:
        with torch.no_grad():
            features = torch.cat(self.backbone(x), dim=1)
        logits = valid_region(self.conv_seg(self.bn(features)), x, 16)
        return (logits, None) if self.training else logits

    def loss(
        self, x: torch.Tensor, label: torch.Tensor, ignore_index: int = 255
    ) -> dict[str, torch.Tensor]:
        """seg_loss of this model on (x, label)."""
        return seg_loss(self(x), label, ignore_index)


def build_segmenter(
    kind: Literal["llfpn", "multilayer", "linear"],
    backbone_spec: str,
    checkpoint: Path | None = None,
    num_classes: int = 0,
    img_size: int = 512,
    drop_path_rate: float = 0.1,
    aux: bool = True,
    out_indices: Sequence[int] | None = None,
    arch: dict | None = None,
) -> nn.Module:
    """A Segmenter (`llfpn`: LL-FPN over the last block; `multilayer`: BEiT's neck over 4 blocks)
    or a LinearProbe (`linear`: 4 blocks, frozen, so no drop path and no aux head) over the
    backbone of `backbone_spec` (see build_backbone). `out_indices` overrides the blocks.
    With `arch` (a fine-tuned model's `backbone.arch`) the backbone is built from that record,
    randomly initialised, and neither the spec nor a checkpoint is read."""
    if num_classes < 1:
        raise UnipError(f"num_classes must be >= 1, got {num_classes}")
    if kind not in ("llfpn", "multilayer", "linear"):
        raise UnipError(f"unknown segmenter kind {kind!r}: choose llfpn, multilayer or linear")
    # a linear probe's backbone is frozen and in eval mode: drop path would never act
    rate = 0.0 if kind == "linear" else drop_path_rate
    model = _load(backbone_spec, checkpoint, img_size, rate, arch)
    depth = len(model.blocks)
    if out_indices is None:
        out_indices = (depth - 1,) if kind == "llfpn" else default_out_indices(depth)
    backbone = ViTBackbone(model, out_indices)
    if kind == "linear":
        return LinearProbe(backbone, num_classes)
    neck = LastLayerFPN if kind == "llfpn" else MultiLayerFPN
    return Segmenter(backbone, neck(backbone.embed_dim), num_classes, aux=aux)
