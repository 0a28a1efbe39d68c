"""unip.models.segment / seg_heads / seg_optim: backbone maps against timm's own blocks, position
embeddings at other sizes, FPN strides, UPerHead pooling, the frozen linear probe, layer-wise lr
decay against a hand-written table, checkpoints saved locally, and a loss that goes down.
Tiny ViTs (width 32, depth 4) at 64-96 px; the full-width tiny student only where a spec needs it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from tests.conftest import randomise
from unip.errors import UnipError
from unip.models import create_student
from unip.models.seg_heads import FCNHead, LastLayerFPN, MultiLayerFPN, UperHead
from unip.models.seg_optim import layer_decay_groups
from unip.models.segment import (
    AUX_WEIGHT,
    LinearProbe,
    Segmenter,
    ViTBackbone,
    build_backbone,
    build_segmenter,
    cross_entropy,
    seg_loss,
)

DIM = 32


def tiny_vit(**kw) -> VisionTransformer:
    args = dict(img_size=64, patch_size=16, embed_dim=DIM, depth=4, num_heads=2, num_classes=0)
    return randomise(VisionTransformer(**{**args, **kw})).eval()


def images(*size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def timm_block_tokens(vit: VisionTransformer, x: torch.Tensor, block: int) -> torch.Tensor:
    """Tokens after `block` (0-based), run through timm's own embedding and blocks."""
    t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for blk in vit.blocks[: block + 1]:
        t = blk(t)
    return t


def mae_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed in numpy, with the zero cls slot."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)))
    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


# ---- necks and heads ---------------------------------------------------------------------------


def test_last_layer_fpn_gives_strides_4_8_16_32():
    fpn = LastLayerFPN(DIM).eval()
    x = torch.randn(2, DIM, 4, 6)  # a 64x96 image at stride 16
    outs = fpn([x])
    assert [tuple(o.shape) for o in outs] == [
        (2, DIM, 16, 24),
        (2, DIM, 8, 12),
        (2, DIM, 4, 6),
        (2, DIM, 2, 3),
    ]
    assert torch.equal(outs[2], x)
    assert torch.equal(outs[3], x.reshape(2, DIM, 2, 2, 3, 2).amax(dim=(3, 5)))
    with pytest.raises(UnipError, match="last block"):
        fpn([x, x])


def test_multilayer_fpn_applies_each_op_to_its_own_map():
    fpn = MultiLayerFPN(DIM).eval()
    maps = [torch.randn(2, DIM, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    outs = fpn(maps)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
    assert torch.equal(outs[2], maps[2])
    assert torch.equal(outs[3], maps[3].reshape(2, DIM, 2, 2, 2, 2).amax(dim=(3, 5)))
    assert torch.allclose(outs[1], fpn.ops[1](maps[1])) and not torch.allclose(
        outs[1], fpn.ops[1](maps[0])
    )
    with pytest.raises(UnipError, match="4 blocks"):
        fpn(maps[:1])


def test_uper_head_pools_to_each_scale_and_fuses_at_the_finest_level():
    head = UperHead([DIM] * 4, 16, num_classes=5, pool_scales=(1, 2, 3, 6)).eval()
    levels = [torch.randn(2, DIM, 24 // 2**i, 24 // 2**i) for i in range(4)]  # 24, 12, 6, 3
    levels[3] = torch.randn(2, DIM, 6, 6)  # a 6x6 top level, so every pool scale divides it
    pooled = []
    for branch in head.psp_modules:
        branch[0].register_forward_hook(lambda m, i, o: pooled.append(o))
    out = head(levels)
    assert out.shape == (2, 5, 24, 24)
    assert [p.shape[-2:] for p in pooled] == [(1, 1), (2, 2), (3, 3), (6, 6)]
    top = levels[3]
    assert torch.allclose(pooled[0], top.mean(dim=(2, 3), keepdim=True), atol=1e-6)
    quadrant = top[:, :, :3, 3:].mean(dim=(2, 3))
    assert torch.allclose(pooled[1][:, :, 0, 1], quadrant, atol=1e-6)
    assert torch.equal(pooled[3], top)
    # the bottleneck sees the top level plus one `channels` map per pool scale
    assert head.bottleneck[0].in_channels == DIM + 4 * 16
    assert UperHead([DIM] * 4, 16, 5, pool_scales=(1, 3)).bottleneck[0].in_channels == DIM + 32


def test_conv_modules_are_conv_without_bias_bn_relu():
    head = FCNHead(DIM, num_classes=3, channels=8, num_convs=2)
    conv, bn, act = head.convs[0]
    assert conv.bias is None and conv.kernel_size == (3, 3)
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(act, torch.nn.ReLU)
    assert len(head.convs) == 2 and head.convs[1][0].in_channels == 8
    assert isinstance(head.cls_seg[0], torch.nn.Dropout2d) and head.cls_seg[0].p == 0.1
    assert head.eval()(torch.randn(2, DIM, 4, 6)).shape == (2, 3, 4, 6)


# ---- backbone ---------------------------------------------------------------------------------


def test_backbone_returns_the_requested_blocks_without_final_norm():
    vit = tiny_vit(img_size=(64, 96))
    x = images(64, 96)
    reference = [timm_block_tokens(vit, x, i) for i in (1, 3)]
    backbone = ViTBackbone(copy.deepcopy(vit), (3, 1))  # order kept
    maps = backbone(x)
    assert [tuple(m.shape) for m in maps] == [(2, DIM, 4, 6)] * 2
    for got, tokens in zip(maps, reference[::-1], strict=True):
        want = tokens[:, 1:].reshape(2, 4, 6, DIM).permute(0, 3, 1, 2)
        assert torch.allclose(got, want, atol=1e-5)
    normed = vit.norm(reference[1])[:, 1:].reshape(2, 4, 6, DIM).permute(0, 3, 1, 2)
    assert not torch.allclose(maps[0], normed, atol=1e-2)


def test_backbone_drops_register_tokens_and_unused_blocks():
    kw = dict(reg_tokens=2, no_embed_class=True)
    vit, x = tiny_vit(**kw), images(64, 64)
    want = vit.forward_intermediates(x, indices=[1], norm=False, intermediates_only=True)[0]
    backbone = ViTBackbone(copy.deepcopy(vit), (1,))
    assert torch.allclose(backbone(x)[0], want, atol=1e-5)
    assert len(backbone.model.blocks) == 2  # blocks 2, 3 would get no gradient
    assert all(isinstance(m, torch.nn.Identity) for m in (backbone.model.norm, backbone.model.head))
    with pytest.raises(UnipError, match=r"0\.\.3"):
        ViTBackbone(tiny_vit(), (4,))


def test_learned_pos_embed_is_resampled_for_smaller_windows():
    vit = tiny_vit()
    dynamic = tiny_vit(dynamic_img_size=True)  # timm's own on-the-fly resampling
    dynamic.load_state_dict(vit.state_dict())
    backbone = ViTBackbone(vit, (3,))
    x = images(32, 48)
    want = dynamic.forward_intermediates(x, indices=[3], norm=False, intermediates_only=True)[0]
    assert torch.allclose(backbone(x)[0], want, atol=1e-5)
    odd = images(40, 56)  # not a multiple of the patch: zero-padded bottom/right to 48x64
    padded = F.pad(odd, (0, 8, 0, 8))
    assert torch.equal(backbone(odd)[0], backbone(padded)[0])
    assert backbone(odd)[0].shape == (2, DIM, 3, 4)


def test_student_sincos_is_regenerated_for_smaller_windows():
    student = randomise(create_student("unip_vit_tiny_patch16", last_heads=4, img_size=64))
    state = {k: v for k, v in student.state_dict().items() if k != "pos_embed"}
    small = create_student("unip_vit_tiny_patch16", last_heads=4, img_size=(32, 48))
    small.load_state_dict(state, strict=False)  # its own sin-cos for a 2x3 grid
    x = images(32, 48)
    want = timm_block_tokens(small.eval(), x, 11)[:, 1:].reshape(2, 2, 3, -1).permute(0, 3, 1, 2)
    assert torch.allclose(ViTBackbone(student.eval(), (11,))(x)[0], want, atol=1e-4)


# ---- checkpoints -------------------------------------------------------------------------------


def test_timm_checkpoint_builds_at_crop_512_with_resampled_pos_embed(tmp_path):
    src = randomise(timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0))
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    for spec in (f"vit_tiny_patch16_224={tmp_path / 'vit.pth'}", str(tmp_path / "vit.pth")):
        backbone = build_backbone(spec, img_size=512, out_indices=(1,))  # 2 blocks kept
        pos = backbone.model.pos_embed
        assert pos.shape == (1, 1 + 32 * 32, 192)
        assert torch.equal(pos[:, :1], src.pos_embed[:, :1])  # cls slot kept as is
        grid = src.pos_embed[:, 1:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2)
        want = F.interpolate(grid, size=(32, 32), mode="bicubic", antialias=True)
        assert torch.allclose(pos[:, 1:], want.flatten(2).transpose(1, 2), atol=1e-6)
        assert torch.equal(backbone.model.blocks[1].mlp.fc1.weight, src.blocks[1].mlp.fc1.weight)
    with torch.no_grad():
        assert backbone.eval()(torch.randn(1, 3, 512, 512))[0].shape == (1, 192, 32, 32)


def test_unip_train_checkpoint_builds_at_crop_512_with_regenerated_sincos(tmp_path):
    student = randomise(create_student("unip_vit_tiny_patch16", last_heads=4, img_size=64))
    config = {"student": {"model": "unip_vit_tiny_patch16", "last_heads": 4}}
    payload = {"model": student.state_dict(), "optimizer": {}, "step": 7, "config": config}
    torch.save(payload, tmp_path / "step_7.pt")
    seg = build_segmenter("llfpn", str(tmp_path / "step_7.pt"), num_classes=3, img_size=512)
    vit = seg.backbone.model
    assert vit.blocks[-1].attn.num_heads == 4 and vit.blocks[0].attn.num_heads == 3
    assert np.allclose(vit.pos_embed[0].numpy(), mae_sincos(192, 32), atol=1e-6)
    assert torch.equal(vit.blocks[11].attn.qkv.weight, student.blocks[11].attn.qkv.weight)
    with torch.no_grad():
        assert seg.eval()(torch.randn(1, 3, 512, 512)).shape == (1, 3, 128, 128)


def test_strict_load_errors_surface_as_unip_errors(tmp_path):
    state = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0).state_dict()
    state.pop("blocks.2.mlp.fc2.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UnipError, match=r"missing keys: blocks\.2\.mlp\.fc2\.bias") as e:
        build_backbone(f"vit_tiny_patch16_224={tmp_path / 'bad.pth'}", img_size=64)
    assert "unexpected keys: extra.weight" in str(e.value)
    torch.save(tiny_vit().state_dict(), tmp_path / "narrow.pth")  # width 32, the name says 192
    with pytest.raises(UnipError, match="shape mismatches"):
        build_backbone(f"vit_tiny_patch16_224={tmp_path / 'narrow.pth'}", img_size=64)
    with pytest.raises(UnipError, match="not found"):
        build_backbone(str(tmp_path / "missing.pth"), img_size=64)


# ---- segmenters ---------------------------------------------------------------------------------


def tiny_segmenter(kind: str, num_classes: int = 5) -> torch.nn.Module:
    """build_segmenter's wiring over the width-32 ViT (no timm name has that width)."""
    if kind == "linear":
        return LinearProbe(ViTBackbone(tiny_vit(), (0, 1, 2, 3)), num_classes)
    neck, blocks = (LastLayerFPN, (3,)) if kind == "llfpn" else (MultiLayerFPN, (0, 1, 2, 3))
    return Segmenter(ViTBackbone(tiny_vit(), blocks), neck(DIM), num_classes)


@pytest.mark.parametrize(("kind", "stride"), [("llfpn", 4), ("multilayer", 4), ("linear", 16)])
def test_segmenter_logit_shapes(kind, stride):
    seg = tiny_segmenter(kind).eval()
    with torch.no_grad():
        for h, w in ((64, 64), (64, 96), (96, 64)):
            assert seg(images(h, w)).shape == (2, 5, h // stride, w // stride)
        # padded to 48x64 inside; logits cut to the cells over the real 40x56 pixels
        assert seg(images(40, 56)).shape == (2, 5, math.ceil(40 / stride), math.ceil(56 / stride))
    seg.train()
    logits, aux = seg(images(64, 96))
    assert logits.shape == (2, 5, 64 // stride, 96 // stride)
    assert (aux is None) == (kind == "linear")
    if aux is not None:
        assert aux.shape == (2, 5, 4, 6)  # the stride-16 level


def test_segmenter_blocks_and_drop_path():
    seg = build_segmenter("multilayer", "unip_vit_tiny_patch16", num_classes=2, img_size=64)
    assert seg.backbone.out_indices == (3, 5, 7, 11)
    assert isinstance(seg.neck, MultiLayerFPN)
    assert math.isclose(seg.backbone.model.blocks[-1].drop_path1.drop_prob, 0.1, rel_tol=1e-6)
    llfpn = build_segmenter("llfpn", "unip_vit_tiny_patch16", num_classes=2, img_size=64, aux=False)
    assert llfpn.backbone.out_indices == (11,) and llfpn.aux_head is None
    assert llfpn.decode_head.fpn_bottleneck[0].out_channels == 192  # channels = the width
    probe = build_segmenter("linear", "unip_vit_tiny_patch16", num_classes=2, img_size=64)
    assert probe.backbone.out_indices == (3, 5, 7, 11)
    with pytest.raises(UnipError, match="kind"):
        build_segmenter("mask2former", "unip_vit_tiny_patch16", num_classes=2)
    with pytest.raises(UnipError, match="num_classes"):
        build_segmenter("llfpn", "unip_vit_tiny_patch16", num_classes=0)


def test_aux_head_reads_the_stride_16_map():
    seg = Segmenter(ViTBackbone(tiny_vit(), (3,)), LastLayerFPN(DIM), num_classes=3).train()
    seen = []
    seg.aux_head.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = images(64, 96)
    logits, aux = seg(x)
    assert torch.allclose(seen[0], seg.backbone(x)[0])  # LL-FPN's stride-16 level: the last map
    assert aux.shape == (2, 3, 4, 6) and logits.shape == (2, 3, 16, 24)


def test_linear_probe_trains_only_bn_and_classifier():
    probe = LinearProbe(ViTBackbone(tiny_vit(drop_path_rate=0.5), (0, 1, 2, 3)), num_classes=4)
    trainable = {n for n, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"bn.weight", "bn.bias", "conv_seg.weight", "conv_seg.bias"}
    assert probe.bn.num_features == 4 * DIM
    probe.train()
    assert probe.bn.training and not any(m.training for m in probe.backbone.modules())
    features = []
    probe.backbone.register_forward_hook(lambda m, i, o: features.extend(o))
    x = images(64, 96).requires_grad_()
    logits, aux = probe(x)
    assert aux is None and logits.shape == (2, 4, 4, 6)
    assert not any(f.requires_grad for f in features)
    assert torch.equal(torch.cat(features[:4], 1), torch.cat(probe.backbone(x), 1))  # no drop path
    seg_loss((logits, aux), torch.randint(0, 4, (2, 64, 96)))["loss"].backward()
    assert all(p.grad is None for p in probe.backbone.parameters()) and x.grad is None
    assert probe.conv_seg.weight.grad is not None and probe.bn.weight.grad is not None


def test_cross_entropy_reduces_as_mmseg():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    label = torch.randint(0, 3, (2, 4, 4), generator=g)
    label[0, :2] = 255
    logp = logits.double().log_softmax(1)
    picked = [
        -logp[b, label[b, i, j], i, j]
        for b in range(2)
        for i in range(4)
        for j in range(4)
        if label[b, i, j] != 255
    ]
    # mmseg 0.x: the sum over labelled pixels divided by all 32 pixels (ignored ones add 0)
    assert len(picked) == 24
    every = sum(picked) / label.numel()
    assert math.isclose(cross_entropy(logits, label).item(), every.item(), rel_tol=1e-5)
    labelled = sum(picked) / len(picked)  # avg_non_ignore=True
    got = cross_entropy(logits, label, avg_non_ignore=True).item()
    assert math.isclose(got, labelled.item(), rel_tol=1e-5)
    for avg in (False, True):
        assert cross_entropy(logits, torch.full_like(label, 255), 255, avg).item() == 0.0
    # logits at stride 4 are upsampled to the label, bilinear without corner alignment
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    big = label.repeat_interleave(4, 1).repeat_interleave(4, 2)
    want = F.cross_entropy(up, big, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, big, avg_non_ignore=True), want)
    aux = torch.randn(2, 3, 2, 2, generator=g)
    losses = seg_loss((logits, aux), label)
    total = losses["loss_decode"] + AUX_WEIGHT * losses["loss_aux"]
    assert AUX_WEIGHT == 0.4 and torch.allclose(losses["loss"], total)
    assert set(seg_loss(logits, label)) == {"loss", "loss_decode"}


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    seg = Segmenter(ViTBackbone(tiny_vit(), (3,)), LastLayerFPN(DIM), num_classes=3).train()
    x = images(64, 64)
    label = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()  # a pattern the pixels carry
    label[:, :8] = 255
    opt = torch.optim.SGD(seg.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = seg.loss(x, label)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


# ---- layer-wise lr decay -------------------------------------------------------------------------


def scale_of(name: str, decay: float) -> float:
    """Hand-written table for a depth-4 ViT (num_layers 6)."""
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return decay**5
    for i in range(4):
        if name.startswith(f"blocks.{i}."):
            return decay ** (4 - i)
    assert name.startswith(("norm.", "head.")), name
    return 1.0


def test_layer_decay_scales_no_decay_and_coverage():
    vit = tiny_vit(num_classes=3)
    vit.blocks[2].norm1.weight.requires_grad_(False)
    groups = layer_decay_groups(vit, lr=1e-3, weight_decay=0.05, decay_rate=0.5)
    names = {id(p): n for n, p in vit.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable) and len(seen) == len(set(seen))
    assert "blocks.2.norm1.weight" not in seen
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    expected = {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.bias"}
    assert expected <= no_decay
    assert {"blocks.0.attn.qkv.bias", "blocks.3.norm2.weight", "patch_embed.proj.bias"} <= no_decay
    assert not {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "head.weight"} & no_decay
    assert all(
        n.endswith(".bias") or vit.get_parameter(n).ndim == 1 or n in expected for n in no_decay
    )
    for g in groups:
        assert g["weight_decay"] in (0.0, 0.05)
        for p in g["params"]:
            want = scale_of(names[id(p)], 0.5)
            assert math.isclose(g["lr_scale"], want) and math.isclose(g["lr"], 1e-3 * want)
    assert len({g["name"] for g in groups}) == len(groups) == 12  # 6 layers x decay/no decay
    flat = layer_decay_groups(vit, lr=1e-3, weight_decay=0.05, decay_rate=1.0)
    assert all(g["lr"] == 1e-3 for g in flat)


def test_layer_decay_on_a_segmenter_puts_neck_and_heads_on_top():
    seg = Segmenter(ViTBackbone(tiny_vit(), (3,)), LastLayerFPN(DIM), num_classes=3)
    groups = layer_decay_groups(seg, lr=1.0, weight_decay=0.05, decay_rate=0.9)
    scale = {
        n: g["lr_scale"]
        for g in groups
        for n, p in seg.named_parameters()
        if any(p is q for q in g["params"])
    }
    assert math.isclose(scale["backbone.model.patch_embed.proj.weight"], 0.9**5)
    assert math.isclose(scale["backbone.model.cls_token"], 0.9**5)
    assert math.isclose(scale["backbone.model.blocks.0.mlp.fc1.weight"], 0.9**4)
    assert math.isclose(scale["backbone.model.blocks.3.attn.proj.weight"], 0.9)
    assert all(v == 1.0 for n, v in scale.items() if not n.startswith("backbone."))
    assert len(scale) == sum(1 for _ in seg.parameters())
    torch.optim.AdamW(groups)  # the extra keys ride along
    with pytest.raises(UnipError, match="VisionTransformer"):
        layer_decay_groups(torch.nn.Linear(2, 2), 1.0, 0.0, 0.9)
