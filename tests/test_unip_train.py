"""`unip train`: recipes, schedule, parameter groups, a real CPU run that learns, exact resume,
a 2-process DDP run with gloo, and the guards around the run folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from infmix.build import build
from infmix.config import _set_override, load_config
from tests.conftest import REPO, demo_config_dict
from unip import checkpoint
from unip.cli import app
from unip.config import load_train_config
from unip.errors import UnipError
from unip.optim import lr_factor, param_groups
from unip.train import Plan, train

RECIPES = sorted((REPO / "pipelines" / "distill").glob("*.yaml"))
TEACHER_HEADS = {"vit_large_patch16_224": 16, "vit_base_patch16_224": 12, "vit_tiny_patch16_224": 3}


@pytest.fixture(scope="module")
def corpus(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "out"
    build(load_config(None, data=demo_config_dict(demo_root)), out, workers=1)
    return out


def tiny(**over) -> dict:
    """The demo recipe at 32 px, fast enough for several runs per test."""
    data = yaml.safe_load((REPO / "pipelines" / "distill" / "demo_cpu.yaml").read_text())
    data["data"].update(image_size=32, batch_size=4, workers=0)
    data["optim"].update(batch_size=8, base_lr=0.05, epochs=4, warmup_epochs=0.5)
    for key, value in over.items():
        _set_override(data, key, value)
    return data


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- recipes and schedule


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates(path):
    cfg = load_train_config(path)
    assert cfg.student.last_heads in (None, TEACHER_HEADS[cfg.teacher.model])
    if path.stem != "demo_cpu":  # the paper's hyper-parameters
        assert (cfg.data.image_size, cfg.optim.epochs, cfg.optim.warmup_epochs) == (224, 100, 5)
        assert cfg.optim.batch_size == 4096 and cfg.optim.base_lr == 1.5e-4
        assert tuple(cfg.optim.betas) == (0.9, 0.95) and cfg.optim.weight_decay == 0.05
        assert "torchrun" in path.read_text().split("name:")[0]  # the launch command


def test_paper_layers_in_recipes():
    layers = {p.stem: load_train_config(p).teacher.layer for p in RECIPES}
    assert layers["mae_l_to_unip_s"] == 18 and layers["ibot_l_to_unip_s"] == 21
    assert layers["dino_b_to_unip_s"] == 9


def test_lr_schedule_matches_the_formula():
    warmup, total, floor = 10, 50, 0.1
    for step in range(total + 2):
        if step < warmup:
            expected = step / warmup
        else:
            t = min(1.0, (step - warmup) / (total - warmup))
            expected = floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2
        assert lr_factor(step, warmup, total, floor) == pytest.approx(expected, abs=1e-12)
    assert lr_factor(warmup, warmup, total) == 1.0 and lr_factor(total, warmup, total) == 0.0


def test_plan_splits_the_effective_batch():
    cfg = load_train_config(REPO / "pipelines" / "distill" / "mae_l_to_unip_s.yaml")
    plan = Plan.of(cfg, num_samples=1_000_000, world=8)
    assert plan.accumulation == 2 and plan.steps_per_epoch == 1_000_000 // 4096
    assert plan.lr == pytest.approx(1.5e-4 * 4096 / 256)
    assert plan.warmup_steps == 5 * plan.steps_per_epoch
    assert plan.total_steps == 100 * plan.steps_per_epoch
    with pytest.raises(UnipError, match="not a multiple"):
        Plan.of(cfg, 1_000_000, world=3)


def test_no_weight_decay_on_biases_norms_and_position_embeddings():
    import timm

    import unip.models  # noqa: F401

    model = timm.create_model("unip_vit_tiny_patch16", img_size=32)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= undecayed
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


# ---------------------------------------------------------------- real runs


def test_a_few_cpu_steps_lower_the_loss(corpus, tmp_path):
    cfg = load_train_config(None, data=tiny(**{"optim.epochs": 12}))
    train(cfg, corpus, tmp_path / "run")
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) >= 20
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert all(math.isfinite(x) for x in losses)


def test_resume_gives_the_losses_of_an_uninterrupted_run(corpus, tmp_path):
    data = tiny(checkpoint_every=3, max_steps=9)
    train(load_train_config(None, data=data), corpus, tmp_path / "full")
    data["max_steps"] = 4  # stops after step 4: resumes from the step-3 checkpoint
    train(load_train_config(None, data=data), corpus, tmp_path / "cut")
    assert checkpoint.latest(tmp_path / "cut").name == "step-00000004.pt"
    (tmp_path / "cut" / "checkpoints" / "step-00000004.pt").unlink()  # as if killed at step 4
    data["max_steps"] = 9
    train(load_train_config(None, data=data), corpus, tmp_path / "cut")
    full, cut = metrics(tmp_path / "full"), metrics(tmp_path / "cut")
    assert [m["step"] for m in cut] == list(range(1, 10))  # every step logged once
    for a, b in zip(full, cut, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)


def test_checkpoints_are_rotated_and_load_weights_only(corpus, tmp_path):
    data = tiny(checkpoint_every=2, keep_last=2, max_steps=7)
    train(load_train_config(None, data=data), corpus, tmp_path / "run")
    names = [p.name for p in checkpoint.saved(tmp_path / "run")]
    assert names == ["step-00000006.pt", "step-00000007.pt"]
    state = torch.load(tmp_path / "run" / "checkpoints" / names[-1], weights_only=True)
    assert state["step"] == 7 and "model" in state and "optimizer" in state
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp"))


def test_resume_under_another_config_is_refused(corpus, tmp_path):
    train(load_train_config(None, data=tiny(max_steps=2)), corpus, tmp_path / "run")
    other = load_train_config(None, data=tiny(max_steps=4, **{"optim.base_lr": 0.01}))
    with pytest.raises(UnipError, match=r"optim\.base_lr"):
        train(other, corpus, tmp_path / "run")


def test_ddp_with_two_cpu_processes(corpus, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny(max_steps=4, checkpoint_every=2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "unip",
        "train",
        str(cfg),
        "--data",
        str(corpus),
        "--out",
        str(tmp_path / "o"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = metrics(tmp_path / "o")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the main process logs, once
    assert checkpoint.latest(tmp_path / "o").name == "step-00000004.pt"


def test_cli_train_and_its_errors(corpus, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny(max_steps=2)))
    r = CliRunner().invoke(
        app, ["train", str(cfg), "--data", str(corpus), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["step"] == 2
    r = CliRunner().invoke(
        app,
        ["train", str(cfg), "--data", str(corpus), "--out", str(tmp_path / "p"), "optim.nope=1"],
    )
    assert r.exit_code == 1 and "optim.nope: unknown key" in r.output


def test_readme_demo_command_runs(tmp_path):
    """README set-up command 1, after its install steps, run as written (`.venv/bin/X` is
    this interpreter's X) in a fresh folder."""
    import re
    import shutil

    readme = (REPO / "README.md").read_text()
    command = re.search(r"```bash\n(python3 -m venv .*?)\n```", readme).group(1)
    steps = [s.strip() for s in command.split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -q --no-cache-dir -e ."]
    assert any(s.startswith(".venv/bin/unip analyze") for s in steps)
    assert any(s.startswith(".venv/bin/unip train") for s in steps)
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    bindir = Path(sys.executable).parent
    for step in steps[2:]:
        argv = step.split()
        argv[0] = str(bindir / Path(argv[0]).name)
        p = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (step, p.stderr[-2000:])
    report = json.loads((tmp_path / "demo-analysis" / "attention.json").read_text())
    assert 1 <= report["recommended_layer"] <= 12
    assert checkpoint.latest(tmp_path / "demo-train") is not None
    assert metrics(tmp_path / "demo-train")[-1]["step"] == 9
    result = json.loads((tmp_path / "demo-eval" / "metrics.json").read_text())
    assert result["mIoU"] > 50  # the generated scenes are learnable in the demo's 150 steps
    assert len(list((tmp_path / "demo-eval" / "predictions").glob("*.png"))) == 4


def test_bad_data_fails_before_the_run_folder_is_made(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny()))
    args = ["train", str(cfg), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "neither an infmix build" in r.output
    assert not (tmp_path / "o").exists()


def test_default_last_heads_is_the_teachers_in_checkpoints_and_exports(corpus, tmp_path):
    """A ViT-S student (6 heads) of a ViT-Ti teacher (3 heads) with last_heads left out."""
    import timm

    from unip.export import export
    from unip.models import load_vit

    data = tiny(max_steps=1, **{"student.model": "unip_vit_small_patch16"})
    del data["student"]["last_heads"]
    train(load_train_config(None, data=data), corpus, tmp_path / "run")
    ckpt = checkpoint.latest(tmp_path / "run")
    assert torch.load(ckpt, weights_only=True)["config"]["student"]["last_heads"] == 3
    assert load_vit(None, ckpt).blocks[-1].attn.num_heads == 3
    written = export(ckpt, tmp_path / "export")
    model = timm.create_model(
        written["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "export" / "model.safetensors")),
        **written["model_args"],
    )
    assert model(torch.zeros(1, 3, 32, 32)).shape[1] == 3


def test_resume_survives_a_torn_log_line_and_a_half_written_checkpoint(corpus, tmp_path):
    data = tiny(max_steps=2, checkpoint_every=1)
    train(load_train_config(None, data=data), corpus, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # killed while appending
    tmp = tmp_path / "run" / "checkpoints" / ".step-00000003.pt.999.tmp"
    tmp.write_bytes(b"half")
    data["max_steps"] = 4
    train(load_train_config(None, data=data), corpus, tmp_path / "run")
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert not tmp.exists()


@pytest.mark.parametrize("change", ["workers", "corpus"])
def test_resume_that_would_change_the_stream_is_refused(corpus, demo_root, tmp_path, change):
    train(load_train_config(None, data=tiny(max_steps=2)), corpus, tmp_path / "run")
    if change == "workers":
        cfg, data, match = tiny(max_steps=3, **{"data.workers": 1}), corpus, r"data\.workers"
    else:  # another corpus: 8 images instead of the build's 60
        cfg, data, match = tiny(max_steps=3), demo_root / "coco", "samples an epoch"
    with pytest.raises(UnipError, match=match):
        train(load_train_config(None, data=cfg), data, tmp_path / "run")
