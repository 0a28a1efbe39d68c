"""Attention-pattern analysis: how locally or globally each layer of a ViT attends.

Per head, two numbers: the normalised mutual information (NMI) between query and key positions
(Park et al. 2023: ~1 when each query attends only to itself, ~0 when every query attends alike)
and the attention-weighted distance between patch centres. A layer's pattern (local / hybrid /
global) follows from both, and `pick_layer` turns a model's profile into the layer NMI-HAD
distils. The non-obvious choice: patterns are judged on the distance *relative to uniform
attention on the same grid*, so one set of thresholds serves every image and patch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from infmix.config import _Strict
from unip.errors import UnipError

Pattern = Literal["local", "hybrid", "global"]
NMI_EPS = 1e-8  # added to every weight before the rows are renormalised (Park et al.)


def _patch_rows(attn: Tensor, prefix: int, eps: float) -> Tensor:
    """Patch-to-patch block of `attn` in float64, rows renormalised to sum to 1."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be (B, H, N, N), got {tuple(attn.shape)}")
    a = attn[..., prefix:, prefix:].double()
    if eps:
        a = a + eps
    return a / a.sum(-1, keepdim=True).clamp_min(1e-300)


def _prefix(has_cls: bool, num_prefix_tokens: int | None) -> int:
    return int(has_cls) if num_prefix_tokens is None else num_prefix_tokens


def attention_nmi(
    attn: Tensor, has_cls: bool = True, *, num_prefix_tokens: int | None = None
) -> Tensor:
    """Per-head NMI between query and key positions, averaged over the batch.

    Args:
        attn: (B, H, N, N) post-softmax attention, rows summing to 1.
        has_cls: the cls token sits at index 0; its row and column are dropped.
        num_prefix_tokens: tokens to drop before the patches (cls + registers); overrides
            `has_cls` when given.

    Returns:
        (H,) float64. With a uniform prior over the n patch queries, p(k) the mean attention a
        key receives, NMI = I(Q;K) / sqrt(H(Q) H(K)) where H(Q) = ln n.
    """
    a = _patch_rows(attn, _prefix(has_cls, num_prefix_tokens), NMI_EPS)
    n = a.shape[-1]
    if n < 2:
        raise ValueError("NMI needs at least 2 patch tokens")
    pk = a.mean(-2)  # (B, H, n): p(k) = sum_q p(q) A[q, k]
    mi = (a * (a.log() - pk.log().unsqueeze(-2))).sum((-2, -1)) / n
    hk = -(pk * pk.log()).sum(-1)
    return (mi / torch.sqrt(math.log(n) * hk)).mean(0)


def patch_distances(grid: tuple[int, int], patch_size: int | tuple[int, int] = 16) -> Tensor:
    """(n, n) float64 Euclidean distances in pixels between patch centres, row-major order
    (the order timm flattens patches in)."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    ys, xs = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64) * ph,
        torch.arange(grid[1], dtype=torch.float64) * pw,
        indexing="ij",
    )
    centres = torch.stack([ys.flatten(), xs.flatten()], -1)
    return torch.cdist(centres, centres)


def uniform_distance(grid: tuple[int, int], patch_size: int | tuple[int, int] = 16) -> float:
    """Attention distance of uniform (query-independent) attention: the mean pairwise distance
    of patch centres. The yardstick for `relative` distances."""
    return patch_distances(grid, patch_size).mean().item()


def attention_distance(
    attn: Tensor,
    grid: tuple[int, int],
    patch_size: int | tuple[int, int] = 16,
    has_cls: bool = True,
    *,
    num_prefix_tokens: int | None = None,
) -> Tensor:
    """Per-head mean attention distance in pixels, averaged over the batch.

    For each query patch, the distance to every key patch weighted by the attention it gets
    (cls dropped, rows renormalised), averaged over queries. Returns (H,) float64.
    """
    a = _patch_rows(attn, _prefix(has_cls, num_prefix_tokens), 0.0)
    if a.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"{a.shape[-1]} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    d = patch_distances(grid, patch_size).to(a.device)
    return (a * d).sum(-1).mean(-1).mean(0)


class PatternConfig(_Strict):
    """Thresholds of the local / hybrid / global classifier and the layer rule."""

    global_nmi: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Below this mean NMI a layer attends alike from every query: global.",
    )
    local_nmi: float = Field(
        0.25, gt=0, le=1, description="Local needs at least this mean NMI (and a short distance)."
    )
    local_distance: float = Field(
        0.35,
        gt=0,
        description="Local needs a distance at most this fraction of uniform attention's.",
    )
    min_depth: float = Field(
        0.5,
        ge=0,
        le=1,
        description="pick_layer looks at layers from this fraction of the depth on.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> PatternConfig:
        if self.global_nmi >= self.local_nmi:
            raise ValueError(
                f"global_nmi ({self.global_nmi}) must be below local_nmi ({self.local_nmi})"
            )
        return self


def classify_layer(nmi: float, relative_distance: float, cfg: PatternConfig) -> Pattern:
    """Global: NMI near 0 (the attention map hardly depends on the query). Local: high NMI and
    a short distance (each query looks at its neighbourhood). Hybrid: everything between,
    i.e. attention to nearby patches mixed with attention to shared, distant ones."""
    if nmi < cfg.global_nmi:
        return "global"
    if nmi >= cfg.local_nmi and relative_distance <= cfg.local_distance:
        return "local"
    return "hybrid"


def classify_layers(
    nmi: Sequence[float], relative_distance: Sequence[float], cfg: PatternConfig | None = None
) -> list[Pattern]:
    """Pattern of every layer from its mean NMI and its mean distance / uniform distance."""
    cfg = cfg or PatternConfig()
    return [classify_layer(n, d, cfg) for n, d in zip(nmi, relative_distance, strict=True)]


def pick_layer(
    nmi: Sequence[float], patterns: Sequence[Pattern], cfg: PatternConfig | None = None
) -> tuple[int, str]:
    """The layer to distil (1-based) and why: the most global hybrid layer of the deep part.

    Rule: among hybrid layers at or past `min_depth` of the depth, the one with the lowest mean
    NMI (the deeper one on a tie). Contrastive and self-distilled models (DINO, iBOT) lose NMI
    layer after layer until their last layers turn global, so this is the last hybrid layer
    before that global tail; masked-image models (MAE) stay hybrid to the end and turn more
    local again in their last layers, so it is the dip of their NMI curve. Fallbacks, in order:
    the deepest hybrid layer anywhere; the non-global layer with the lowest NMI; the layer with
    the highest NMI.
    """
    cfg = cfg or PatternConfig()
    depth = len(nmi)
    first = max(1, math.ceil(cfg.min_depth * depth))
    layers = range(1, depth + 1)
    deep = [i for i in layers if i >= first and patterns[i - 1] == "hybrid"]
    if deep:
        best = min(deep, key=lambda i: (nmi[i - 1], -i))
        return best, f"lowest-NMI hybrid layer at depth >= {first} of {depth}"
    hybrid = [i for i in layers if patterns[i - 1] == "hybrid"]
    if hybrid:
        return hybrid[-1], f"no hybrid layer at depth >= {first}: the deepest hybrid layer"
    rest = [i for i in layers if patterns[i - 1] != "global"]
    if rest:
        best = min(rest, key=lambda i: (nmi[i - 1], -i))
        return best, "no hybrid layer: the non-global layer with the lowest NMI"
    best = max(layers, key=lambda i: (nmi[i - 1], i))
    return best, "every layer is global: the layer with the highest NMI"


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """The attention modules of a plain timm ViT; a clear error for anything else."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "forward_features") or not len(blocks):
        raise UnipError(f"{type(model).__name__} is not a timm VisionTransformer (no .blocks)")
    attns = [getattr(b, "attn", None) for b in blocks]
    for i, a in enumerate(attns, 1):
        plain = a is not None and all(hasattr(a, k) for k in ("qkv", "num_heads", "scale"))
        if not plain or "rope" in type(a).__name__.lower():
            raise UnipError(
                f"block {i} attention ({type(a).__name__}) is not plain q.k softmax attention: "
                "not supported"
            )
    return attns


def attention_probs(attn: nn.Module, x: Tensor) -> Tensor:
    """softmax(q k^T * scale) in float32 of one timm `Attention` for its input `x` (B, N, D)
    (the block's norm1 output), q/k-norm applied as timm does."""
    b, n, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
    return logits.softmax(-1)


def layer_attention(model: nn.Module, x: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Yield (layer, attention) for every block of a timm ViT: layer 1-based, attention
    (B, H, N, N) float32 post-softmax, prefix tokens included.

    One forward pass records each attention module's input (forward pre-hooks); the maps are
    then recomputed one layer at a time, so only one (B, H, N, N) map is alive at once. Works at
    any input size the model accepts. Put the model in eval mode first.
    """
    attns = attention_blocks(model)
    inputs: list[Tensor | None] = [None] * len(attns)

    def keeper(i: int):
        def hook(_module, args):
            inputs[i] = args[0].detach()

        return hook

    hooks = [a.register_forward_pre_hook(keeper(i)) for i, a in enumerate(attns)]
    try:
        with torch.inference_mode():
            model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    for i, a in enumerate(attns):
        h, inputs[i] = inputs[i], None
        with torch.inference_mode():  # not around the yield: the mode is global state
            probs = attention_probs(a, h)
        yield i + 1, probs


def token_grid(model: nn.Module, x: Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """(patch grid (h, w), patch size (ph, pw)) of `model` for input `x` (B, C, H, W)."""
    ph, pw = model.patch_embed.patch_size
    return (x.shape[-2] // ph, x.shape[-1] // pw), (ph, pw)
