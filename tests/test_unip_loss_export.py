"""unip.loss.attention_kl against a plain float64 loop, and `unip export` round trips (our
training checkpoints and the official UNIP .pth layout) through timm's pretrained loading."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from unip.cli import app
from unip.errors import UnipError
from unip.export import export
from unip.loss import attention_kl
from unip.models import create_student

IMG = 32


def kl_loop(t: torch.Tensor, s: torch.Tensor) -> float:
    """Mean over (image, head, query) of sum_k p_t log(p_t / p_s), one row at a time."""
    total, rows = 0.0, 0
    for b in range(t.shape[0]):
        for h in range(t.shape[1]):
            for q in range(t.shape[2]):
                tr = [float(v) for v in t[b, h, q]]
                sr = [float(v) for v in s[b, h, q]]
                zt = sum(math.exp(v) for v in tr)
                zs = sum(math.exp(v) for v in sr)
                for a, c in zip(tr, sr, strict=True):
                    pt, ps = math.exp(a) / zt, math.exp(c) / zs
                    total += pt * math.log(pt / ps)
                rows += 1
    return total / rows


def logits(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---- loss --------------------------------------------------------------------------------------


def test_loss_is_zero_when_logits_agree():
    t = logits(2, 3, 17, 17, scale=5.0)
    assert abs(attention_kl(t, t.clone()).item()) <= 1e-7
    assert abs(attention_kl(t, t + 3.0).item()) <= 1e-6  # softmax ignores a per-row shift
    big = t * 1000  # near one-hot rows: still finite and zero
    assert abs(attention_kl(big, big.clone()).item()) <= 1e-7


def test_loss_matches_float64_loop_and_is_positive():
    t, s = logits(2, 3, 5, 5, seed=1, scale=2.0), logits(2, 3, 5, 5, seed=2, scale=2.0)
    got = attention_kl(t, s)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() > 0.01
    assert got.item() == pytest.approx(kl_loop(t, s), rel=1e-5)
    assert attention_kl(s, t).item() != pytest.approx(got.item(), rel=1e-3)  # KL is not symmetric


def test_loss_runs_in_float32_for_low_precision_inputs():
    t, s = logits(1, 2, 9, 9, seed=3), logits(1, 2, 9, 9, seed=4)
    got = attention_kl(t.bfloat16(), s.bfloat16())
    assert got.dtype == torch.float32
    expected = kl_loop(t.bfloat16().float(), s.bfloat16().float())
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_loss_gradient_reaches_only_the_student():
    t = logits(1, 2, 5, 5, seed=5).requires_grad_()
    s = logits(1, 2, 5, 5, seed=6).requires_grad_()
    attention_kl(t, s).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    # d/ds of KL(p_t || softmax(s)) per row is (softmax(s) - p_t) / rows
    expected = (s.softmax(-1) - t.softmax(-1)).detach() / (2 * 5)
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="last_heads"):
        attention_kl(logits(1, 16, 5, 5), logits(1, 6, 5, 5))


# ---- export ------------------------------------------------------------------------------------


def trained_student(last_heads=16):
    model = create_student("unip_vit_tiny_patch16", last_heads=last_heads, img_size=IMG)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def our_checkpoint(path, model):
    opt = torch.optim.AdamW(model.parameters())
    student = {"name": "unip_vit_tiny_patch16", "last_heads": 16, "img_size": IMG}
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}  # a compiled model
    torch.save(
        {"model": state, "config": {"student": student}, "optimizer": opt.state_dict(), "step": 7},
        path,
    )


def assert_timm_loads_identical(out, model):
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "unip_vit_tiny_patch16" and config["num_classes"] == 0
    assert config["model_args"] == {"img_size": IMG, "last_heads": 16}
    assert config["pretrained_cfg"]["mean"] == [0.3801] * 3
    assert config["pretrained_cfg"]["std"] == [0.1871] * 3
    assert config["pretrained_cfg"]["input_size"] == [3, IMG, IMG]
    tensors = load_file(str(out / "model.safetensors"))
    assert set(tensors) == set(model.state_dict())
    loaded = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
        **config["model_args"],
    ).eval()
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded.forward_features(x), model.forward_features(x))
    via_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(via_dir(x), model(x))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_export_our_training_checkpoint(tmp_path):
    model = trained_student()
    our_checkpoint(tmp_path / "step_7.pt", model)
    config = export(tmp_path / "step_7.pt", tmp_path / "out")
    assert config["model_args"]["last_heads"] == 16
    assert_timm_loads_identical(tmp_path / "out", model)


def test_export_official_unip_checkpoint(tmp_path):
    model = trained_student()
    args = argparse.Namespace(model="unip_vit_tiny_patch16", last_heads=16, input_size=IMG)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "args": args, "epoch": 99, "optimizer": {}}, tmp_path / "unip.pth")
    export(tmp_path / "unip.pth", tmp_path / "out")
    assert_timm_loads_identical(tmp_path / "out", model)


def test_export_bare_state_dict_needs_last_heads(tmp_path):
    model = trained_student()
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pth")
    export(tmp_path / "bare.pth", tmp_path / "out", last_heads=16)
    assert_timm_loads_identical(tmp_path / "out", model)


def test_export_is_strict_and_writes_nothing_on_error(tmp_path):
    model = trained_student()
    sd = model.state_dict()
    del sd["blocks.3.mlp.fc1.weight"]
    torch.save(
        {"model": sd, "config": {"student": {"name": "unip_vit_tiny_patch16"}}}, tmp_path / "c.pt"
    )
    with pytest.raises(UnipError, match=r"missing keys: blocks\.3\.mlp\.fc1\.weight"):
        export(tmp_path / "c.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    torch.save({"step": 3}, tmp_path / "nomodel.pt")
    with pytest.raises(UnipError, match="not a student checkpoint"):
        export(tmp_path / "nomodel.pt", tmp_path / "out")


def test_export_cli(tmp_path):
    model = trained_student()
    our_checkpoint(tmp_path / "last.pt", model)
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "last.pt"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["architecture"] == "unip_vit_tiny_patch16"
    assert_timm_loads_identical(tmp_path / "o", model)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    result = runner.invoke(app, ["export", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "error:" in result.output
