"""Build a plain timm ViT from a name, a checkpoint file, or both, and load it strictly.

Checkpoints are read with `torch.load(weights_only=True)` (only `argparse.Namespace` is
allow-listed, for the official UNIP and MAE files) or as safetensors, then mapped from their
published layouts (MAE, DINO, iBOT, DeiT, timm, UNIP) to timm's key names. Only keys documented
as unneeded are dropped (MAE decoder and mask token, iBOT masked embedding, DINO/iBOT projection
heads, classifier heads when the model has none); any other mismatch is an error listing keys.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from unip.checkpoint import read as read_torch_checkpoint
from unip.errors import UnipError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
"""Head count assumed per embedding width when only a checkpoint is given (shapes cannot tell)."""
CONTAINER_KEYS = ("model", "teacher", "state_dict", "student", "model_ema")
"""Where a state dict sits inside a training checkpoint, in order of preference (the DINO/iBOT
EMA `teacher` before the `student`)."""
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
DROP_PREFIXES = ("decoder", "mask_token", "masked_embed")  # MAE decoder + mask token, iBOT
UNSUPPORTED_KEYS = {
    "relative_position_bias": "BEiT (relative position bias)",
    "rel_pos": "BEiT (relative position bias)",
    ".q_bias": "BEiT (relative position bias)",
    "rope": "EVA (rotary position embedding)",
    "attn.q_proj": "EVA (rotary position embedding)",
}
FAMILIES = {"Eva": "EVA (rotary position embedding)", "Beit": "BEiT (relative position bias)"}


def parse_spec(spec: str) -> tuple[str | None, Path | None, bool]:
    """Split a model SPEC into (timm name, checkpoint, pretrained).

    Forms: `vit_base_patch16_224`, `vit_base_patch16_224:pretrained`, `path/to/ckpt.pth` (an
    existing file, a name with a checkpoint suffix, or anything with a `/`), and
    `vit_large_patch16_224=path/to/mae.pth` (name and checkpoint).
    """
    spec = spec.strip()
    if not spec:
        raise UnipError("empty model spec: give a timm name, a checkpoint file, or NAME=CHECKPOINT")
    if Path(spec).is_file():
        return None, Path(spec), False
    if "=" in spec:
        name, _, path = spec.partition("=")
        if not name or not path:
            raise UnipError(f"model spec {spec!r}: expected NAME=CHECKPOINT")
        return name, Path(path), False
    if spec.endswith(":pretrained"):
        return spec.removesuffix(":pretrained"), None, True
    if "/" in spec or spec.endswith(CHECKPOINT_SUFFIXES):
        return None, Path(spec), False
    return spec, None, False


def load_vit(
    name: str | None,
    checkpoint: Path | None = None,
    pretrained: bool = False,
    **kw: Any,
) -> VisionTransformer:
    """A plain timm ViT (no classifier unless `num_classes` is given), strictly loaded.

    With only a checkpoint, the architecture comes from its shapes (width, depth, patch, image
    size, MLP ratio, qkv bias, tokens) and the head count from `num_heads` or DEFAULT_HEADS;
    official UNIP files name their student in `args.model` (and `args.last_heads`), `unip train`
    checkpoints in `config.student`. A checkpoint wins over `pretrained`. The resolved name
    and kwargs are kept in `model.unip_arch` (see create_vit).
    """
    if name is None and checkpoint is None:
        raise UnipError("load_vit needs a timm model name, a checkpoint, or both")
    kw.setdefault("num_classes", 0)
    if checkpoint is None:
        model = _create(name, pretrained=pretrained, **kw)
        check_supported(model, name)
        model.unip_arch = {"name": name, "kwargs": dict(kw)}
        return model
    state, meta = read_checkpoint(checkpoint)
    _refuse_unsupported_keys(state, checkpoint)
    if name is None:
        name, inferred = _arch_from_checkpoint(state, meta, kw.get("num_heads"))
        kw = {**inferred, **kw}
    elif name.startswith("unip_") and meta.get("last_heads"):
        kw.setdefault("last_heads", meta["last_heads"])
    if "fc_norm.weight" in state and "norm.weight" not in state:
        kw.setdefault("global_pool", "avg")  # MAE fine-tuned: global pool with fc_norm
    model = _create(name, pretrained=False, **kw)
    check_supported(model, name)
    load_strict(model, state, str(checkpoint))
    model.unip_arch = {"name": name, "kwargs": dict(kw)}
    return model


def check_arch(arch: dict) -> None:
    """Raise unless `arch` is {"name": str | None, "kwargs": {ARCH_KEYS: plain values}}."""
    name, kwargs = arch.get("name"), arch.get("kwargs")
    plain = (int, float, bool, str, type(None))
    if not (name is None or isinstance(name, str)) or not isinstance(kwargs, dict):
        raise UnipError(f"not a model architecture record: {arch!r:.200}")
    for key, value in kwargs.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        if key not in ARCH_KEYS or not all(isinstance(v, plain) for v in values):
            raise UnipError(f"model architecture record: {key}={value!r:.80} is not accepted")


# what load_vit's callers and _arch_from_checkpoint / infer_vit_kwargs put in an architecture
ARCH_KEYS = {
    "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
    "class_token", "reg_tokens", "pre_norm", "init_values", "no_embed_class", "pos_embed",
    "global_pool", "num_classes", "drop_path_rate", "last_heads",
}  # fmt: skip


def create_vit(arch: dict) -> VisionTransformer:
    """The architecture `load_vit` recorded in `model.unip_arch`, randomly initialised: what a
    fine-tuning checkpoint rebuilds its backbone from, without the pre-training weights. Only
    ARCH_KEYS with plain values are accepted, so a record can never make timm read a file."""
    check_arch(arch)
    model = _create(arch["name"], pretrained=False, **arch["kwargs"])
    check_supported(model, arch["name"])
    model.unip_arch = {"name": arch["name"], "kwargs": dict(arch["kwargs"])}
    return model


def check_supported(model: torch.nn.Module, name: str | None = None) -> None:
    """Raise unless every block is timm's plain pre-norm Block with a plain qkv Attention."""
    label = name or type(model).__name__
    if not isinstance(model, VisionTransformer):
        cls = type(model).__name__
        family = FAMILIES.get(cls, f"{cls} ({type(model).__module__})")
        raise UnipError(
            f"{label}: the {family} family is not supported: unip needs timm's plain "
            "VisionTransformer attention (qkv Linear, absolute position embedding)"
        )
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(getattr(blk, "attn", None)) is not Attention:
            kind = f"{type(blk).__name__} with {type(getattr(blk, 'attn', None)).__name__}"
            raise UnipError(
                f"{label}: block {i} is a {kind}, not supported: unip needs timm's plain "
                "Block with a qkv Attention in every layer"
            )


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a checkpoint file in timm key names, and what it says about its model:
    the `args` Namespace of MAE/DINO/UNIP files as a dict, or `model`/`last_heads` from the
    `config.student` of a `unip train` checkpoint ({} when neither is there)."""
    path = Path(path)
    if not path.is_file():
        raise UnipError(f"checkpoint {path} not found")
    obj = load_checkpoint_file(path)
    return to_timm_keys(_select_state_dict(obj, path)), _checkpoint_meta(obj)


def _checkpoint_meta(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {}
    config = obj.get("config")
    if isinstance(config, dict) and isinstance(config.get("student"), dict):
        student = config["student"]
        name = student.get("model") or student.get("name")  # `unip train` writes `model`
        return {"model": name, "last_heads": student.get("last_heads")}
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


def load_checkpoint_file(path: Path) -> Any:
    """The object in a checkpoint file: safetensors, or unip.checkpoint.read (torch.load with
    weights_only=True, only argparse.Namespace allow-listed)."""
    if path.suffix != ".safetensors":
        return read_torch_checkpoint(path)
    try:
        from safetensors.torch import load_file

        return load_file(path)
    except Exception as e:  # truncated or foreign files
        raise UnipError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def _select_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise UnipError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in CONTAINER_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    raise UnipError(
        f"{path}: no state dict found: expected a dict of tensors or one under "
        f"{', '.join(CONTAINER_KEYS)}; top-level keys are {sorted(map(str, obj))[:10]}"
    )


def to_timm_keys(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, keep a DINO/iBOT `backbone.` (dropping its projection head) and
    drop MAE's decoder and mask token and iBOT's masked embedding."""
    out = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    if any(k.startswith("backbone.") for k in out):
        out = {k.removeprefix("backbone."): v for k, v in out.items() if k.startswith("backbone.")}
    return {
        k: v
        for k, v in out.items()
        if isinstance(v, torch.Tensor) and not k.startswith(DROP_PREFIXES)
    }


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`; any missing, unexpected or mis-shaped key is an error listing
    them. A classifier head the model lacks is dropped; an absolute position embedding of another
    grid is resampled (a fixed sin-cos one is regenerated by the model instead)."""
    own = model.state_dict()
    state = dict(state)
    for key in [k for k in state if k.split(".")[0] in ("head", "head_dist") and k not in own]:
        del state[key]
    _fit_pos_embed(model, state, own)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if keys:
                more = f" (+{len(keys) - 20} more)" if len(keys) > 20 else ""
                parts.append(f"{label}: {', '.join(keys[:20])}{more}")
        raise UnipError(f"{source} does not match {type(model).__name__}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _fit_pos_embed(model: torch.nn.Module, state: dict, own: dict) -> None:
    pos = state.get("pos_embed")
    if pos is None or "pos_embed" not in own or pos.shape == own["pos_embed"].shape:
        return
    if getattr(model, "fixed_pos_embed", False):
        state["pos_embed"] = own["pos_embed"]
        return
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    if pos.ndim != 3 or not _is_square(pos.shape[1] - prefix):
        return  # leave it to the shape check
    state["pos_embed"] = resample_abs_pos_embed(
        pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
    )


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _create(name: str | None, pretrained: bool, **kw: Any) -> torch.nn.Module:
    if name is None:  # architecture inferred from a checkpoint
        return VisionTransformer(**kw)
    if name.startswith("unip_"):
        import unip.models.student  # noqa: F401  (registers the students with timm)
    if not timm.is_model(name):
        raise UnipError(f"unknown timm model {name!r} (see timm.list_models('vit_*'))")
    try:
        return timm.create_model(name, pretrained=pretrained, **kw)
    except (OSError, RuntimeError) as e:
        if pretrained:
            raise UnipError(f"{name}: could not get pretrained weights ({e})") from None
        raise


def _refuse_unsupported_keys(state: dict, path: Path) -> None:
    for key in state:
        for marker, family in UNSUPPORTED_KEYS.items():
            if marker in key:
                raise UnipError(
                    f"{path}: key {key!r} shows a {family} checkpoint: that family is not "
                    "supported (unip needs plain qkv attention with absolute position embedding)"
                )


def _arch_from_checkpoint(
    state: dict, meta: dict, num_heads: int | None
) -> tuple[str | None, dict]:
    """A timm name (None: a bare VisionTransformer) and kwargs reproducing the checkpoint."""
    student = str(meta.get("model", ""))
    if student.startswith("unip_"):
        kw = {"last_heads": meta["last_heads"]} if meta.get("last_heads") else {}
        if "pos_embed" in state:
            kw["img_size"] = _grid(state["pos_embed"].shape[1] - 1) * 16
        return student.removesuffix("_224"), kw
    return None, infer_vit_kwargs(state, num_heads)


def infer_vit_kwargs(state: dict[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """VisionTransformer kwargs from a timm-keyed state dict's shapes."""
    if "patch_embed.proj.weight" not in state:
        raise UnipError("cannot infer a ViT from this checkpoint: no patch_embed.proj.weight")
    proj = state["patch_embed.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = num_heads or DEFAULT_HEADS.get(dim)
    if heads is None:
        raise UnipError(
            f"checkpoint has width {dim}, which has no default head count "
            f"({DEFAULT_HEADS}): give a timm name (NAME=CHECKPOINT) or num_heads"
        )
    kw = dict(
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        class_token="cls_token" in state,
        reg_tokens=state["reg_token"].shape[1] if "reg_token" in state else 0,
        pre_norm="norm_pre.weight" in state,
        init_values=1e-5 if "blocks.0.ls1.gamma" in state else None,
    )
    if "pos_embed" in state:
        tokens = state["pos_embed"].shape[1]
        prefix = int(kw["class_token"]) + kw["reg_tokens"]
        kw["no_embed_class"] = prefix > 0 and _is_square(tokens)
        kw["img_size"] = _grid(tokens if kw["no_embed_class"] else tokens - prefix) * patch
    else:
        kw["pos_embed"] = "none"
    return kw


def _grid(n: int) -> int:
    if not _is_square(n):
        raise UnipError(f"position embedding with {n} patch tokens is not a square grid")
    return math.isqrt(n)
