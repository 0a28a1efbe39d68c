"""Attention analysis: NMI and distance against plain-loop references, the pattern classifier and
layer rule on synthetic profiles, per-layer attention against timm's own, and `unip analyze`
end to end on a folder of images and on an infmix build."""

from __future__ import annotations

import csv
import json
import math
import shutil
import tarfile

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from infmix.build import build
from infmix.config import load_config
from tests.conftest import demo_config_dict
from unip.analysis import (
    PatternConfig,
    attention_distance,
    attention_nmi,
    classify_layers,
    layer_attention,
    pick_layer,
)
from unip.analyze import encoded_images, pattern_config
from unip.cli import app
from unip.errors import UnipError

runner = CliRunner()


def dirichlet(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = -torch.rand(*shape, generator=g, dtype=torch.float64).log()  # Exp(1) -> Dirichlet(1)
    return x / x.sum(-1, keepdim=True)


def nmi_loop(a: list[list[float]], prefix: int) -> float:
    """Park et al.'s NMI of one (N, N) map, written out term by term."""
    rows = [[v + 1e-8 for v in row[prefix:]] for row in a[prefix:]]
    rows = [[v / sum(row) for v in row] for row in rows]
    n = len(rows)
    pk = [sum(rows[q][k] for q in range(n)) / n for k in range(n)]
    mi = 0.0
    for q in range(n):
        for k in range(n):
            mi += (1 / n) * rows[q][k] * math.log(rows[q][k] / pk[k])
    hk = -sum(p * math.log(p) for p in pk)
    return mi / math.sqrt(math.log(n) * hk)


def distance_loop(a: list[list[float]], grid, patch, prefix: int) -> float:
    """Mean over queries of the attention-weighted distance between patch centres."""
    h, w = grid
    ph, pw = patch
    centres = [((i + 0.5) * ph, (j + 0.5) * pw) for i in range(h) for j in range(w)]
    rows = [row[prefix:] for row in a[prefix:]]
    total = 0.0
    for q, row in enumerate(rows):
        s = sum(row)
        for k, v in enumerate(row):
            total += v / s * math.dist(centres[q], centres[k])
    return total / len(rows)


# --- NMI -------------------------------------------------------------------------------------


def test_nmi_is_one_for_self_attention_and_zero_for_query_independent():
    n = 1 + 16
    local = torch.eye(n).expand(2, 3, n, n)
    assert torch.allclose(attention_nmi(local), torch.ones(3, dtype=torch.float64), atol=1e-5)
    same_rows = dirichlet(2, 3, 1, n).expand(2, 3, n, n)
    assert attention_nmi(same_rows).abs().max() < 1e-6
    assert attention_nmi(same_rows).dtype == torch.float64


def test_nmi_matches_loop_reference_on_random_maps():
    a = dirichlet(3, 2, 10, 10, seed=1)
    for has_cls in (True, False):
        got = attention_nmi(a.float(), has_cls=has_cls)
        want = [
            np.mean([nmi_loop(a[b, h].tolist(), int(has_cls)) for b in range(3)]) for h in range(2)
        ]
        assert got.shape == (2,)
        assert np.allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


def test_nmi_ignores_the_cls_row_and_column():
    patches = dirichlet(2, 2, 9, 9, seed=2)
    maps = []
    for seed in (3, 4):
        cls_col = torch.rand(2, 2, 9, 1, generator=torch.Generator().manual_seed(seed))
        body = torch.cat([cls_col, (1 - cls_col) * patches], -1)  # rows still sum to 1
        maps.append(torch.cat([dirichlet(2, 2, 1, 10, seed=seed), body], -2))
    assert not torch.allclose(maps[0], maps[1])
    assert torch.allclose(attention_nmi(maps[0]), attention_nmi(maps[1]), atol=1e-7)
    assert torch.allclose(attention_nmi(maps[0]), attention_nmi(patches, has_cls=False), atol=1e-7)


def test_registers_count_as_prefix_tokens():
    a = dirichlet(1, 2, 13, 13, seed=5)
    want = [nmi_loop(a[0, h].tolist(), 4) for h in range(2)]
    assert np.allclose(attention_nmi(a, num_prefix_tokens=4).numpy(), want, rtol=1e-6)


# --- distance --------------------------------------------------------------------------------


def test_distance_zero_for_self_attention_and_mean_pairwise_for_uniform():
    grid, n = (3, 4), 1 + 12
    assert attention_distance(torch.eye(n)[None, None], grid).abs().max() < 1e-9
    uniform = torch.full((2, 3, n, n), 1 / n)
    centres = [(16 * i, 16 * j) for i in range(3) for j in range(4)]
    pairs = [math.dist(p, q) for p in centres for q in centres]
    want = sum(pairs) / len(pairs)
    assert np.allclose(attention_distance(uniform, grid).numpy(), [want] * 3, rtol=1e-9)


def test_distance_on_a_known_grid():
    # 2x2 patches of 10 x 20 px: every query looks only at the opposite corner
    a = torch.zeros(1, 1, 4, 4)
    for q, k in enumerate((3, 2, 1, 0)):
        a[0, 0, q, k] = 1
    got = attention_distance(a, (2, 2), (10, 20), has_cls=False)
    assert got.item() == pytest.approx(math.hypot(10, 20))


def test_distance_matches_loop_reference_on_random_maps():
    a = dirichlet(2, 3, 7, 7, seed=6)
    got = attention_distance(a, (2, 3), (16, 8))
    want = [
        np.mean([distance_loop(a[b, h].tolist(), (2, 3), (16, 8), 1) for b in range(2)])
        for h in range(3)
    ]
    assert np.allclose(got.numpy(), want, rtol=1e-9)
    with pytest.raises(ValueError, match="grid"):
        attention_distance(a, (2, 2))


# --- patterns and the layer rule ---------------------------------------------------------------


def profile(nmi: list[float]) -> tuple[list[float], list[str]]:
    """Distances that fall as NMI rises, as in real models (self-attention ~0, uniform ~1)."""
    rel = [max(0.0, 1 - 2 * n) for n in nmi]
    return nmi, classify_layers(nmi, rel)


def test_classifier_thresholds():
    cfg = PatternConfig()
    nmi = [0.6, 0.3, 0.3, 0.1, 0.02]
    rel = [0.1, 0.3, 0.5, 0.7, 0.3]
    assert classify_layers(nmi, rel, cfg) == ["local", "local", "hybrid", "hybrid", "global"]
    strict = PatternConfig(local_nmi=0.5, global_nmi=0.2)
    assert classify_layers(nmi, rel, strict) == ["local", "hybrid", "hybrid", "global", "global"]
    with pytest.raises(ValueError, match="global_nmi"):
        PatternConfig(global_nmi=0.4, local_nmi=0.3)


def test_rule_on_contrastive_profiles_picks_the_last_hybrid_layer():
    # DINO-B-like: NMI falls layer after layer, the last three layers collapse to global
    dino = [0.6, 0.5, 0.42, 0.35, 0.3, 0.22, 0.16, 0.12, 0.08, 0.03, 0.02, 0.02]
    nmi, patterns = profile(dino)
    assert patterns[:4] == ["local"] * 4 and patterns[9:] == ["global"] * 3
    assert pick_layer(nmi, patterns)[0] == 9
    # iBOT-L-like: 24 layers, global from 22 on
    ibot = [*np.linspace(0.6, 0.07, 21), 0.03, 0.02, 0.02]
    assert pick_layer(*profile(ibot))[0] == 21


def test_rule_on_a_masked_image_profile_picks_the_nmi_dip():
    # MAE-L-like: never global; NMI dips in the late layers, then rises again towards the end
    mae = [*np.linspace(0.6, 0.2, 12), 0.18, 0.16, 0.14, 0.12, 0.11, 0.10]
    mae += [0.12, 0.15, 0.18, 0.22, 0.26, 0.3]
    nmi, patterns = profile(mae)
    assert "global" not in patterns
    layer, reason = pick_layer(nmi, patterns)
    assert layer == 18 and "lowest-NMI hybrid" in reason


def test_rule_fallbacks():
    # the only hybrid layers are shallow: the deepest of them
    patterns = ["local", "hybrid", "hybrid"] + ["global"] * 5
    layer, reason = pick_layer([0.5, 0.1, 0.2] + [0.01] * 5, patterns)
    assert layer == 3 and "deepest hybrid" in reason
    # no hybrid layer: the most global of the non-global ones; all global: the highest NMI
    assert pick_layer([0.6, 0.5, 0.01], ["local", "local", "global"])[0] == 2
    assert pick_layer([0.01, 0.03, 0.02], ["global"] * 3)[0] == 2
    # min_depth=0 lets the rule look at every layer
    nmi, patterns = [0.1, 0.2, 0.3, 0.4], ["hybrid"] * 4
    assert pick_layer(nmi, patterns)[0] == 2  # layers 2..4 (from 50% of the depth)
    assert pick_layer(nmi, patterns, PatternConfig(min_depth=0))[0] == 1


def test_pattern_overrides_name_the_key():
    assert pattern_config(["global_nmi=0.02"]).global_nmi == 0.02
    with pytest.raises(UnipError, match="global_nmi"):
        pattern_config(["global_nmi=2"])
    with pytest.raises(UnipError, match="nmi_global"):
        pattern_config(["nmi_global=0.1"])


# --- per-layer attention of a timm ViT -------------------------------------------------------


def timm_attention(model, x) -> list[torch.Tensor]:
    """timm's own attention maps: its explicit (non-fused) path, caught after the softmax."""
    maps, hooks = [], []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o)))
    with torch.no_grad():
        model.forward_features(x)
    for h in hooks:
        h.remove()
    return maps


@pytest.mark.parametrize(
    "kw, size",
    [
        (dict(img_size=32), (32, 32)),
        (dict(img_size=32, qk_norm=True, reg_tokens=2, dynamic_img_size=True), (48, 32)),
    ],
)
def test_layer_attention_equals_timm_attention(kw, size):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=4, **kw).eval()
    x = torch.randn(2, 3, *size)
    ours = list(layer_attention(model, x))
    assert [i for i, _ in ours] == [1, 2, 3, 4]
    assert not any(b.attn._forward_pre_hooks for b in model.blocks)
    n = model.num_prefix_tokens + (size[0] // 16) * (size[1] // 16)
    for (_, got), want in zip(ours, timm_attention(model, x), strict=True):
        assert got.shape == (2, 3, n, n) and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-6)


def test_first_layer_attention_equals_float64_computation():
    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    got = next(iter(layer_attention(model, x)))[1]
    m = model.double()
    with torch.no_grad():
        patches = m.patch_embed.proj(x.double()).flatten(2).transpose(1, 2)
        tokens = torch.cat([m.cls_token.expand(2, -1, -1), patches], 1) + m.pos_embed
        blk = m.blocks[0]
        h = F.layer_norm(tokens, (192,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        q, k, _ = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).chunk(3, -1)
        q, k = (t.reshape(2, 5, 3, 64).transpose(1, 2) for t in (q, k))
        want = torch.softmax(q @ k.transpose(-2, -1) / 8.0, -1)
    assert torch.allclose(got.double(), want, atol=1e-6)


def test_layer_attention_refuses_other_models():
    with pytest.raises(UnipError, match="not a timm VisionTransformer"):
        list(layer_attention(torch.nn.Linear(2, 2), torch.zeros(1, 2)))
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=2)
    model.blocks[1].attn = torch.nn.Identity()
    with pytest.raises(UnipError, match="block 2"):
        list(layer_attention(model, torch.zeros(1, 3, 32, 32)))


# --- unip analyze ----------------------------------------------------------------------------

STRENGTHS = [1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.0, 0.0, 0.0]


def planted_vit(img_size: int = 64) -> torch.nn.Module:
    """A ViT-Ti whose layers attend as planted: q = k = c * LN(x) over position embeddings that
    dominate the tokens, and no residual updates. c = 1: self-attention (local); c = 0.6..0.5:
    softer (hybrid); c = 0: uniform (global). The rule should pick layer 9."""
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=img_size)
    d = m.embed_dim
    with torch.no_grad():
        m.pos_embed.normal_(0, 10.0)
        m.cls_token.normal_(0, 10.0)
        for blk, c in zip(m.blocks, STRENGTHS, strict=True):
            w = torch.zeros(3 * d, d)
            w[: 2 * d] = c * torch.eye(d).repeat(2, 1)
            blk.attn.qkv.weight.copy_(w)
            blk.attn.qkv.bias.zero_()
            blk.attn.proj.weight.zero_()
            blk.mlp.fc2.weight.zero_()
    return m


@pytest.fixture(scope="module")
def planted_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "planted.pth"
    torch.save(planted_vit().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(root / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 90), dtype=np.uint8)).save(root / "b.png")
    Image.fromarray(rng.integers(0, 2**14, (70, 70), dtype=np.uint16)).save(root / "c16.png")
    for i in range(3):
        img = rng.integers(0, 256, (64 + 8 * i, 64), dtype=np.uint8)
        Image.fromarray(img).save(root / "sub" / "deeper" / f"{i}.png")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def analyze(*args: str):
    result = runner.invoke(app, ["analyze", *args])
    return result, result.output


def test_analyze_image_folder_finds_the_planted_patterns(planted_ckpt, image_folder, tmp_path):
    out = tmp_path / "out"
    spec = f"vit_tiny_patch16_224={planted_ckpt}"
    result, output = analyze(
        "--model", spec, "--data", str(image_folder), "--out", str(out), "--images", "100",
        "--batch-size", "4", "--image-size", "64", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, output
    assert "recommended distillation layer: 9" in output
    report = json.loads((out / "attention.json").read_text())
    assert report["images"] == 6 and report["skipped"] == 1  # broken.jpg
    assert report["grid"] == [4, 4] and report["layer"] == report["recommended_layer"] == 9
    patterns = [r["pattern"] for r in report["layers"]]
    assert patterns == ["local"] * 6 + ["hybrid"] * 3 + ["global"] * 3
    assert report["layers"][0]["nmi"] > 0.9 and report["layers"][-1]["nmi"] < 1e-3

    with open(out / "attention.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for row, r in zip(rows, report["layers"], strict=True):
        assert int(row["layer"]) == r["layer"] and row["pattern"] == r["pattern"]
        assert float(row["nmi"]) == pytest.approx(r["nmi"], rel=1e-12)
        assert float(row["nmi"]) == pytest.approx(np.mean(r["nmi_heads"]), rel=1e-9)
        heads = [float(row[f"distance_px_h{h}"]) for h in range(3)]
        assert heads == pytest.approx(r["distance_heads_px"], rel=1e-12)
        assert float(row["distance_px"]) == pytest.approx(np.mean(heads), rel=1e-9)

    with Image.open(out / "attention.png") as png:
        assert png.format == "PNG" and png.size == (800, 600)
        png.verify()
    assert not list(out.glob(".*tmp"))


@pytest.fixture(scope="module")
def corpus(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build(load_config(None, data=demo_config_dict(demo_root)), out, workers=1)
    return out


def test_images_are_read_in_shard_order(corpus):
    wds = pytest.importorskip("webdataset")
    info = json.loads((corpus / "_info.json").read_text())["splits"]["train"]
    urls = [str(corpus / f) for f in info["filenames"]]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    names = [name.split(".")[0] for name, _ in encoded_images(corpus, [])]
    assert names == keys and len(keys) == info["num_samples"]


def test_a_broken_shard_is_skipped(corpus, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    shard = (
        broken / json.loads((corpus / "_info.json").read_text())["splits"]["train"]["filenames"][0]
    )
    with tarfile.open(shard) as tar:
        third = tar.getmembers()[2]  # cut the second sample's image in half
    shard.write_bytes(shard.read_bytes()[: third.offset_data + third.size // 2])
    skipped = []
    names = [name for name, _ in encoded_images(broken, skipped)]
    assert len(skipped) == 1 and str(shard) in skipped[0]
    assert len(names) == 1 + 28  # the first shard up to the damage, the second whole


def test_analyze_infmix_build_is_batch_independent(corpus, tmp_path):
    torch.manual_seed(3)
    ckpt = tmp_path / "tiny32.pth"  # checkpoint only: the architecture comes from its shapes
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32).state_dict(), ckpt)
    reports = []
    for bs, layer in (("3", "5"), ("10", None)):
        out = tmp_path / f"out{bs}"
        args = ["--model", str(ckpt), "--data", str(corpus), "--out", str(out), "--images", "10"]
        args += ["--batch-size", bs] + (["--layer", layer] if layer else [])
        result, output = analyze(*args)
        assert result.exit_code == 0, output
        reports.append(json.loads((out / "attention.json").read_text()))
    a, b = reports
    assert a["images"] == b["images"] == 10 and a["image_size"] == [32, 32]
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        assert ra["nmi_heads"] == pytest.approx(rb["nmi_heads"], rel=1e-4, abs=1e-8)
        assert ra["distance_heads_px"] == pytest.approx(rb["distance_heads_px"], rel=1e-6)
    assert a["layer"] == 5 and a["layer_from_option"] and not b["layer_from_option"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vit_no_such_model"], "unknown timm model"),
        (["--model", "vit_tiny_patch16_224", "--images", "0"], "--images must be at least 1"),
        (["--model", "vit_tiny_patch16_224", "--layer", "13"], "the model has layers 1..12"),
        (["--model", "vit_tiny_patch16_224", "global_nmi=5"], "global_nmi"),
        (["--model", "missing/ckpt.pth"], "not found"),
    ],
)
def test_analyze_errors(tmp_path, image_folder, args, message):
    result, output = analyze(*args, "--data", str(image_folder), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "error: " in output and message in output
    assert not (tmp_path / "o").exists()


def test_analyze_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    result, output = analyze(
        "--model", "vit_tiny_patch16_224", "--image-size", "32",
        "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.exit_code == 1 and "error: no images in" in output
