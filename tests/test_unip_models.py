"""unip.models: teacher and student logits against a float64 re-computation, the registered
students, the published checkpoint layouts, strict loading, the weights_only refusal and the
unsupported families. Tiny ViTs at 32-64 px, checkpoints saved locally."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import ResPostBlock, VisionTransformer

from tests.conftest import randomise
from unip.errors import UnipError
from unip.models import STUDENTS, create_student, create_teacher, load_vit, parse_spec
from unip.models.checkpoints import check_supported

IMG = 64


def tiny_vit(**kw) -> VisionTransformer:
    args = {"img_size": IMG, "num_classes": 0, **kw}
    return randomise(timm.create_model("vit_tiny_patch16_224", **args)).eval()


# ---- float64 reference, written from the formulas -------------------------------------------


def layer_norm(x, w, b, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def reference(sd, x, heads, layer=None, patch=16):
    """Logits of block `layer` (1-based), or the final normed tokens when layer is None;
    `heads` is a list with one head count per block."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    w = sd["patch_embed.proj.weight"]
    b, _, hh, ww = x.shape
    gh, gw = hh // patch, ww // patch
    patches = (
        x.reshape(b, 3, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, -1)
    )
    t = patches @ w.reshape(w.shape[0], -1).T + sd["patch_embed.proj.bias"]
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], dim=1) + sd["pos_embed"]
    dim = t.shape[-1]
    for i, nh in enumerate(heads):
        p = f"blocks.{i}."
        h = layer_norm(t, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        qkv = h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = qkv.reshape(b, -1, 3, nh, dim // nh).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) * (dim // nh) ** -0.5
        if layer is not None and i == layer - 1:
            return logits
        a = torch.exp(logits - logits.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)
        o = (a @ v).transpose(1, 2).reshape(b, -1, dim)
        t = t + o @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = layer_norm(t, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        t = t + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return layer_norm(t, sd["norm.weight"], sd["norm.bias"])


def assert_rel_close(actual, expected, rel=1e-5):
    err = (actual.double() - expected).abs().max().item()
    assert err <= rel * expected.abs().max().item(), (err, expected.abs().max().item())


def mae_sincos(dim, grid):
    """MAE's get_2d_sincos_pos_embed, numpy, with the cls slot."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)))
    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.fixture
def images():
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


# ---- teacher ---------------------------------------------------------------------------------


def test_teacher_logits_match_float64_reference(tmp_path, images):
    src = tiny_vit()
    ckpt = tmp_path / "vit.pth"
    torch.save(src.state_dict(), ckpt)
    teacher = create_teacher(f"vit_tiny_patch16_224={ckpt}", layer=7, img_size=IMG)
    out = teacher(images)
    assert out.shape == (2, 3, 17, 17) and out.dtype == torch.float32
    assert_rel_close(out, reference(src.state_dict(), images, [3] * 12, layer=7))
    # a wrong layer gives different logits: the comparison can fail
    assert (
        out.double() - reference(src.state_dict(), images, [3] * 12, layer=6)
    ).abs().max() > 1e-2


def test_teacher_is_frozen_eval_and_truncated(images):
    teacher = create_teacher("vit_tiny_patch16_224", layer=3, img_size=IMG, drop_path_rate=0.5)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert len(teacher.model.blocks) == 3 and teacher.layer == 3 and teacher.depth == 12
    assert torch.equal(teacher(images), teacher(images))  # no stochastic depth in eval
    out = teacher(images.requires_grad_())
    assert not out.requires_grad
    with pytest.raises(UnipError, match=r"1\.\.12"):
        create_teacher("vit_tiny_patch16_224", layer=13, img_size=IMG)
    with pytest.raises(UnipError, match="layer"):
        create_teacher("vit_tiny_patch16_224", img_size=IMG)


def test_teacher_keeps_float32_logits_under_autocast(images):
    teacher = create_teacher("vit_tiny_patch16_224", layer=2, img_size=IMG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = teacher(images)
    assert out.dtype == torch.float32


# ---- students --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_registered_students_create(name):
    model = timm.create_model(name, img_size=32)
    spec = STUDENTS[name]
    assert model.embed_dim == spec["embed_dim"] and len(model.blocks) == spec["depth"]
    assert {b.attn.num_heads for b in model.blocks} == {spec["num_heads"]}
    assert model.num_classes == 0 and model.patch_embed.patch_size == (16, 16)
    assert all(b.norm1.eps == 1e-6 and b.attn.qkv.bias is not None for b in model.blocks)
    out = model(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, spec["num_heads"], 5, 5)


def test_student_position_embedding_is_fixed_mae_sincos():
    model = create_student("unip_vit_small_patch16", img_size=IMG)
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" in model.state_dict()
    expected = torch.from_numpy(mae_sincos(384, IMG // 16)).float()
    torch.testing.assert_close(model.pos_embed[0], expected, rtol=0, atol=1e-6)


def test_student_last_heads_and_divisibility():
    model = timm.create_model("unip_vit_small_patch16", last_heads=16, img_size=32)
    assert model.blocks[-1].attn.num_heads == 16 and model.blocks[-1].attn.head_dim == 24
    assert model.blocks[0].attn.num_heads == 6
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 16, 5, 5)
    with pytest.raises(UnipError, match="does not divide"):
        timm.create_model("unip_vit_small_patch16", last_heads=5, img_size=32)
    with pytest.raises(UnipError, match="unknown student"):
        create_student("unip_vit_huge_patch16")


def test_student_logits_and_features_match_float64_reference(images):
    model = randomise(create_student("unip_vit_tiny_patch16", last_heads=16, img_size=IMG)).eval()
    sd = model.state_dict()
    heads = [3] * 11 + [16]
    logits = model(images)
    assert logits.shape == (2, 16, 17, 17) and logits.dtype == torch.float32
    assert_rel_close(logits, reference(sd, images, heads, layer=12))
    assert_rel_close(model.forward_features(images), reference(sd, images, heads))


def test_student_logits_skip_last_value_path_and_mlp(images):
    model = create_student("unip_vit_tiny_patch16", last_heads=4, img_size=IMG)
    model(images).square().mean().backward()
    last = model.blocks[-1]
    assert last.attn.qkv.weight.grad is not None and model.blocks[0].mlp.fc1.weight.grad is not None
    v_rows = last.attn.qkv.weight.grad[2 * 192 :]
    assert torch.count_nonzero(v_rows) == 0  # the value rows of qkv are never used
    unused = set(model.unused_in_distillation())
    assert {"blocks.11.attn.proj.weight", "blocks.11.mlp.fc2.bias", "norm.weight"} <= unused
    assert "blocks.11.attn.qkv.weight" not in unused and "blocks.10.mlp.fc1.weight" not in unused
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name in unused), name


# ---- checkpoint layouts ------------------------------------------------------------------------


def assert_same_weights(model, expected: dict[str, torch.Tensor]):
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def small_vit(**kw):
    return tiny_vit(depth=2, **kw)


def test_mae_checkpoint_with_decoder_and_args(tmp_path):
    src = small_vit().state_dict()
    mae = dict(src)
    mae.update(
        {
            "mask_token": torch.zeros(1, 1, 128),
            "decoder_embed.weight": torch.zeros(128, 192),
            "decoder_pos_embed": torch.zeros(1, 17, 128),
            "decoder_blocks.0.attn.qkv.weight": torch.zeros(384, 128),
            "decoder_norm.weight": torch.zeros(128),
            "decoder_pred.weight": torch.zeros(768, 128),
        }
    )
    path = tmp_path / "mae.pth"
    args = argparse.Namespace(model="mae_vit_tiny_patch16", input_size=IMG, norm_pix_loss=True)
    torch.save({"model": mae, "optimizer": {}, "epoch": 799, "args": args}, path)
    model = load_vit(None, path)  # architecture inferred from the shapes
    assert len(model.blocks) == 2 and model.blocks[0].attn.num_heads == 3
    assert_same_weights(model, src)
    assert_same_weights(load_vit("vit_tiny_patch16_224", path, img_size=IMG, depth=2), src)


def test_mae_finetuned_checkpoint_uses_fc_norm(tmp_path):
    src = small_vit(global_pool="avg", num_classes=10).state_dict()
    assert "fc_norm.weight" in src and "norm.weight" not in src
    torch.save({"model": src}, tmp_path / "mae_ft.pth")
    model = load_vit(None, tmp_path / "mae_ft.pth")
    assert model.global_pool == "avg"
    assert_same_weights(model, {k: v for k, v in src.items() if not k.startswith("head.")})


def test_dino_raw_and_full_checkpoints(tmp_path):
    src = small_vit().state_dict()
    torch.save(src, tmp_path / "dino_raw.pth")
    assert_same_weights(load_vit(None, tmp_path / "dino_raw.pth"), src)
    head = {"head.mlp.0.weight": torch.zeros(8, 192), "head.last_layer.weight_g": torch.ones(1)}
    teacher = {**{f"backbone.{k}": v for k, v in src.items()}, **head}
    student = {f"module.{k}": v + 1 for k, v in teacher.items()}
    full = {"teacher": teacher, "student": student, "epoch": 100, "args": argparse.Namespace()}
    torch.save(full, tmp_path / "dino_full.pth")
    assert_same_weights(load_vit(None, tmp_path / "dino_full.pth"), src)  # the EMA teacher


def test_ibot_checkpoint_drops_masked_embed_and_head(tmp_path):
    src = small_vit().state_dict()
    sd = {f"module.backbone.{k}": v for k, v in src.items()}
    sd["module.backbone.masked_embed"] = torch.zeros(1, 192)
    sd["module.head.mlp.0.weight"] = torch.zeros(8, 192)
    torch.save({"state_dict": sd}, tmp_path / "ibot.pth")
    assert_same_weights(
        load_vit("vit_tiny_patch16_224", tmp_path / "ibot.pth", img_size=IMG, depth=2), src
    )


def test_deit_checkpoint_with_head(tmp_path):
    src = randomise(
        timm.create_model("deit_tiny_patch16_224", img_size=IMG, depth=2, num_classes=10)
    )
    src = src.state_dict()
    torch.save({"model": src, "optimizer": {}, "epoch": 299}, tmp_path / "deit.pth")
    kw = dict(img_size=IMG, depth=2)
    with_head = load_vit("deit_tiny_patch16_224", tmp_path / "deit.pth", num_classes=10, **kw)
    assert_same_weights(with_head, src)
    backbone = load_vit("deit_tiny_patch16_224", tmp_path / "deit.pth", **kw)
    assert_same_weights(backbone, {k: v for k, v in src.items() if not k.startswith("head.")})


def test_timm_checkpoint_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = small_vit().state_dict()
    torch.save(src, tmp_path / "timm.pth")
    save_file(src, str(tmp_path / "timm.safetensors"))
    for path in (tmp_path / "timm.pth", tmp_path / "timm.safetensors"):
        assert_same_weights(load_vit("vit_tiny_patch16_224", path, img_size=IMG, depth=2), src)


def test_official_unip_checkpoint_with_namespace(tmp_path, images):
    student = randomise(create_student("unip_vit_tiny_patch16", last_heads=16, img_size=IMG))
    args = argparse.Namespace(model="unip_vit_tiny_patch16", last_heads=16, input_size=IMG)
    path = tmp_path / "unip_tiny.pth"
    torch.save({"model": student.state_dict(), "args": args, "epoch": 99}, path)
    model = load_vit(None, path)
    assert type(model).__name__ == "UnipViT" and model.blocks[-1].attn.num_heads == 16
    assert_same_weights(model, student.state_dict())
    teacher = create_teacher(str(path), layer=12)  # a UNIP student can be analysed too
    torch.testing.assert_close(teacher(images), student.eval()(images))


def test_unip_train_checkpoint_and_named_unip_checkpoint(tmp_path):
    student = randomise(create_student("unip_vit_tiny_patch16", last_heads=4, img_size=IMG))
    config = {"student": {"name": "unip_vit_tiny_patch16", "last_heads": 4, "img_size": IMG}}
    torch.save({"model": student.state_dict(), "config": config, "step": 5}, tmp_path / "s.pt")
    model = load_vit(None, tmp_path / "s.pt")
    assert model.blocks[-1].attn.num_heads == 4
    assert_same_weights(model, student.state_dict())
    args = argparse.Namespace(model="unip_vit_tiny_patch16", last_heads=4)
    torch.save({"model": student.state_dict(), "args": args}, tmp_path / "u.pth")
    named = load_vit("unip_vit_tiny_patch16", tmp_path / "u.pth", img_size=IMG)
    assert named.blocks[-1].attn.num_heads == 4


def test_position_embedding_resampled_to_another_size(tmp_path):
    torch.save(small_vit().state_dict(), tmp_path / "vit.pth")
    model = load_vit(None, tmp_path / "vit.pth", img_size=96)
    assert model.pos_embed.shape == (1, 37, 192)


# ---- strictness and safety ----------------------------------------------------------------------


def test_strict_loading_lists_missing_unexpected_and_shapes(tmp_path):
    src = small_vit().state_dict()
    bad = {k: v for k, v in src.items() if k != "blocks.1.attn.qkv.weight"}
    bad["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UnipError) as err:
        load_vit("vit_tiny_patch16_224", tmp_path / "bad.pth", img_size=IMG, depth=2)
    assert "missing keys: blocks.1.attn.qkv.weight" in str(err.value)
    assert "unexpected keys: blocks.0.extra.weight" in str(err.value)
    torch.save(src, tmp_path / "tiny.pth")
    with pytest.raises(
        UnipError,
        match=r"shape mismatches: .*blocks\.0\.attn\.qkv\.weight \(576, 192\) vs model \(1152",
    ):
        load_vit("vit_small_patch16_224", tmp_path / "tiny.pth", img_size=IMG, depth=2)
    with pytest.raises(UnipError, match=r"missing keys: .*blocks\.2"):
        load_vit("vit_tiny_patch16_224", tmp_path / "tiny.pth", img_size=IMG, depth=3)


TRIGGERED: list[str] = []


def _trigger() -> str:
    TRIGGERED.append("ran")
    return "payload"


class Payload:
    """Unpickling this would call _trigger: weights_only must refuse before that."""

    def __reduce__(self):
        return (_trigger, ())


def test_pickled_object_is_refused(tmp_path):
    torch.save({"model": small_vit().state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnipError, match=r"refused to load.*_trigger"):
        load_vit(None, tmp_path / "evil.pth")
    assert TRIGGERED == []
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UnipError, match=r"junk\.pth: not a readable checkpoint"):
        load_vit(None, tmp_path / "junk.pth")
    with pytest.raises(UnipError, match="not found"):
        load_vit(None, tmp_path / "missing.pth")


def test_checkpoint_only_needs_known_width_or_num_heads(tmp_path):
    src = randomise(
        VisionTransformer(img_size=32, embed_dim=96, depth=1, num_heads=2, num_classes=0)
    )
    torch.save(src.state_dict(), tmp_path / "w96.pth")
    with pytest.raises(UnipError, match="no default head count"):
        load_vit(None, tmp_path / "w96.pth")
    model = load_vit(None, tmp_path / "w96.pth", num_heads=2)
    assert model.blocks[0].attn.num_heads == 2
    assert_same_weights(model, src.state_dict())


def test_unsupported_families():
    with pytest.raises(UnipError, match=r"EVA .*not supported"):
        load_vit("eva02_tiny_patch14_224", depth=1)
    with pytest.raises(UnipError, match=r"BEiT .*not supported"):
        load_vit("beit_base_patch16_224", depth=1)
    respost = VisionTransformer(
        img_size=32, embed_dim=64, depth=1, num_heads=2, block_fn=ResPostBlock
    )
    with pytest.raises(UnipError, match=r"ResPostBlock.*not supported"):
        check_supported(respost)
    with pytest.raises(UnipError, match="unknown timm model"):
        load_vit("vit_nonexistent_patch16")


def test_unsupported_checkpoint_keys(tmp_path):
    sd = small_vit().state_dict()
    sd["blocks.0.attn.relative_position_bias_table"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "beit.pth")
    with pytest.raises(UnipError, match=r"BEiT .*not supported"):
        load_vit(None, tmp_path / "beit.pth")


def test_parse_spec(tmp_path):
    existing = tmp_path / "weights"
    existing.write_bytes(b"")
    assert parse_spec("vit_base_patch16_224") == ("vit_base_patch16_224", None, False)
    assert parse_spec("vit_base_patch16_224:pretrained") == ("vit_base_patch16_224", None, True)
    assert parse_spec("ckpt/mae.pth") == (None, Path("ckpt/mae.pth"), False)
    assert parse_spec("mae.pth")[1].name == "mae.pth"
    assert parse_spec(str(existing)) == (None, existing, False)
    name, path, pretrained = parse_spec("vit_large_patch16_224=ckpt/mae.pth")
    assert (name, str(path), pretrained) == ("vit_large_patch16_224", "ckpt/mae.pth", False)
    for bad in ("", "  ", "=x.pth", "vit_base_patch16_224="):
        with pytest.raises(UnipError):
            parse_spec(bad)
