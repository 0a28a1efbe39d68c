"""Segmentation necks and heads over ViT patch maps: the BEiT/UNIP FPN necks, mmseg's UPerHead
and its auxiliary FCNHead.

Layers, init and resizing follow mmsegmentation 0.x (ConvModule = conv without bias + BN + ReLU,
kaiming fan-out; classifier N(0, 0.01); bilinear with align_corners=False), so configs and
numbers from the BEiT/UNIP papers carry over. BatchNorm2d here: convert it with
`nn.SyncBatchNorm.convert_sync_batchnorm` under DDP, as their SyncBN configs do.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from unip.errors import UnipError


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """mmseg's resize: bilinear, align_corners=False (a no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """mmcv's ConvModule as the UperNet configs use it: conv (no bias) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """mmseg's cls_seg: Dropout2d then a 1x1 conv initialised N(0, 0.01), zero bias."""
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), conv)


def _fpn_ops(dim: int) -> nn.ModuleList:
    """BEiT's four rescaling ops on a stride-16 map: x4 up (two transposed convs with BN+GELU
    between), x2 up, identity, /2 max-pool -> strides 4, 8, 16, 32, all `dim` channels."""
    return nn.ModuleList(
        [
            nn.Sequential(
                nn.ConvTranspose2d(dim, dim, 2, 2),
                nn.BatchNorm2d(dim),
                nn.GELU(),
                nn.ConvTranspose2d(dim, dim, 2, 2),
            ),
            nn.ConvTranspose2d(dim, dim, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2, 2),
        ]
    )


class LastLayerFPN(nn.Module):
    """LL-FPN (UNIP's choice for its students): the four scales all from the last block's map."""

    def __init__(self, dim: int):
        super().__init__()
        self.ops = _fpn_ops(dim)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != 1:
            raise UnipError(f"LastLayerFPN takes the last block's map only, got {len(maps)} maps")
        return [op(maps[0]) for op in self.ops]


class MultiLayerFPN(nn.Module):
    """BEiT's neck: the four ops applied to maps of four blocks ((4, 6, 8, 12) of 12), in order."""

    def __init__(self, dim: int):
        super().__init__()
        self.ops = _fpn_ops(dim)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != 4:
            raise UnipError(f"MultiLayerFPN takes the maps of 4 blocks, got {len(maps)}")
        return [op(m) for op, m in zip(self.ops, maps, strict=True)]


class PPM(nn.ModuleList):
    """Pyramid pooling: average-pool to each scale, 1x1 ConvModule, upsample back."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int):
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1))
            for s in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(branch(x), x.shape[-2:]) for branch in self]


class UperHead(nn.Module):
    """mmseg's UPerHead: PPM on the coarsest level, a top-down FPN over the others, all levels
    fused at the finest stride (4 after the FPN necks) and classified there."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        in_channels = list(in_channels)
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.cls_seg = _classifier(channels, num_classes, dropout)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.lateral_convs) + 1:
            raise UnipError(
                f"UperHead expects {len(self.lateral_convs) + 1} levels, got {len(inputs)}"
            )
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=False)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse added into the finer level
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize(o, size) for o in outs], dim=1))
        return self.cls_seg(fused)


class FCNHead(nn.Module):
    """mmseg's auxiliary FCNHead (concat_input=False): `num_convs` 3x3 ConvModules, then the
    classifier. Applied to the stride-16 level; its loss weight is the trainer's (AUX_WEIGHT)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__()
        if num_convs < 1:
            raise UnipError(f"FCNHead needs num_convs >= 1, got {num_convs}")
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(*(ConvModule(a, b, 3) for a, b in pairwise(widths)))
        self.cls_seg = _classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))
