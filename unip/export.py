"""`unip export`: a student checkpoint -> model.safetensors + config.json that timm loads.

Accepts our training checkpoints (`model` + `config.student`) and the official UNIP `.pth`
files (`model` + an `argparse.Namespace` in `args`). The weights are loaded strictly into the
registered student first, so a file that would not load in timm is never written; both outputs
are written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from unip.errors import UnipError
from unip.models.checkpoints import load_checkpoint_file, load_strict, to_timm_keys
from unip.models.student import STUDENTS, create_student

WIDTHS = {spec["embed_dim"]: name for name, spec in STUDENTS.items()}


def export(
    ckpt: Path, out: Path, *, name: str | None = None, last_heads: int | None = None
) -> dict[str, Any]:
    """Write `out/model.safetensors` and `out/config.json`; returns the config.

    `name` / `last_heads` override what the checkpoint records (needed only for a bare state
    dict whose last block has a head count other than the regular one).
    """
    if not Path(ckpt).is_file():
        raise UnipError(f"checkpoint {ckpt} not found")
    obj = load_checkpoint_file(Path(ckpt))
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise UnipError(f"{ckpt}: not a student checkpoint (expected a 'model' state dict)")
    state = to_timm_keys(obj["model"])
    student = {**describe_student(obj, state), **_given(name=name, last_heads=last_heads)}
    model = create_student(
        student["name"], last_heads=student["last_heads"], img_size=student["img_size"]
    )
    load_strict(model, state, str(ckpt))
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    config = timm_config(student, num_features=model.num_features)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "model.safetensors", lambda p: save_file(tensors, str(p)))
    _atomic(out / "config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return config


def describe_student(obj: dict, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """{name, last_heads, img_size} from our `config.student`, else the UNIP `args` Namespace
    (`model`, `last_heads`, `input_size`), else the state dict's width and position grid."""
    cfg = obj.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("student"), dict):
        student = cfg["student"]
        found = {
            "name": student.get("model") or student.get("name"),  # `unip train` writes `model`
            "last_heads": student.get("last_heads"),
            "img_size": student.get("img_size") or (cfg.get("data") or {}).get("image_size"),
        }
    else:
        args = obj.get("args")
        found = vars(args) if hasattr(args, "__dict__") else dict(args or {})
        found = {
            "name": found.get("model"),
            "last_heads": found.get("last_heads") or found.get("num_heads_last"),
            "img_size": found.get("input_size"),
        }
    name = str(found.get("name") or "")
    if name and not name.startswith("unip_"):
        name = f"unip_{name}"  # UNIP args may name the bare architecture (vit_small_patch16)
    name = name.removesuffix("_224") or _name_from_width(state)
    img_size = found.get("img_size") or _img_size_from_state(state)
    return {"name": name, "last_heads": found.get("last_heads"), "img_size": int(img_size)}


def timm_config(student: dict[str, Any], num_features: int) -> dict[str, Any]:
    """config.json as timm's hub exports write it (also loadable with `local-dir:`)."""
    size = student["img_size"]
    model_args = {"img_size": size}
    if student.get("last_heads"):
        model_args["last_heads"] = int(student["last_heads"])
    return {
        "architecture": student["name"],
        "num_classes": 0,
        "num_features": num_features,
        "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": "unip",
            "custom_load": False,
            "input_size": [3, size, size],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [0.3801, 0.3801, 0.3801],
            "std": [0.1871, 0.1871, 0.1871],
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def _given(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _name_from_width(state: dict[str, torch.Tensor]) -> str:
    weight = state.get("patch_embed.proj.weight")
    width = None if weight is None else weight.shape[0]
    if width not in WIDTHS:
        raise UnipError(
            f"cannot tell which student this is (width {width}): pass the name "
            f"({', '.join(STUDENTS)})"
        )
    return WIDTHS[width]


def _img_size_from_state(state: dict[str, torch.Tensor]) -> int:
    pos = state.get("pos_embed")
    if pos is None:
        return 224
    grid = round((pos.shape[1] - 1) ** 0.5)
    return grid * 16


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
