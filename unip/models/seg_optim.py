"""Layer-wise lr decay parameter groups for fine-tuning a ViT segmenter (BEiT / mmseg's
LayerDecayOptimizerConstructor).

The ViT is found by type, not by name: parameters under the one VisionTransformer in the model
get layer ids from their path inside it (embeddings 0, blocks.i -> i + 1); everything else
(necks, heads, a kept final norm) is the top layer, trained at the full lr.
"""

from __future__ import annotations

import re

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unip.errors import UnipError
from unip.optim import EMBEDDING_NAMES, skips_decay

"""ViT parameters in layer 0 with patch_embed, and never weight-decayed."""
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def layer_decay_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    decay_rate: float,
    num_layers: int | None = None,
) -> list[dict]:
    """AdamW groups keyed by (layer id, decay/no_decay) with lr = lr * lr_scale.

    lr_scale = decay_rate ** (num_layers - layer_id - 1), num_layers = depth + 2 by default
    (depth: the ViT's blocks as the model holds them). No weight decay on 1-d parameters,
    biases, position embeddings and tokens; frozen parameters are left out. Each group also
    carries "lr_scale" (for a scheduler that sets lr itself) and a "name".
    """
    prefix, vit = _find_vit(model)
    num_layers = num_layers or len(vit.blocks) + 2
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        inner = name.removeprefix(prefix) if name.startswith(prefix) else None
        layer = num_layers - 1 if inner is None else vit_layer_id(inner, num_layers)
        decay = not skips_decay(name, p.ndim)
        if (layer, decay) not in groups:
            scale = decay_rate ** (num_layers - layer - 1)
            groups[layer, decay] = {
                "name": f"layer_{layer}_{'decay' if decay else 'no_decay'}",
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[layer, decay]["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter named as inside a timm VisionTransformer."""
    if name.split(".")[0] in (*EMBEDDING_NAMES, "patch_embed"):
        return 0
    block = _BLOCK.match(name)
    if block:
        return int(block.group(1)) + 1
    return num_layers - 1


def _find_vit(model: nn.Module) -> tuple[str, VisionTransformer]:
    """The one VisionTransformer in `model` and the parameter-name prefix leading to it."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, VisionTransformer)]
    if len(found) != 1:
        raise UnipError(
            f"layer-wise lr decay needs exactly one VisionTransformer in the model, "
            f"found {len(found)} ({', '.join(n or '<root>' for n, _ in found) or 'none'})"
        )
    name, vit = found[0]
    return (f"{name}." if name else ""), vit
