"""`unip finetune` / `unip eval`: recipes, schedule, data order, learning, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infmix.config import _set_override
from unip.errors import UnipError
from unip.finetune import StepSampler, finetune, lr_factor
from unip.segconfig import load_finetune_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "pipelines" / "finetune").glob("*.yaml")) + sorted(
    (REPO / "pipelines" / "linprobe").glob("*.yaml")
)


def tiny(**over) -> dict:
    cfg = {
        "seed": 0,
        "data": {"kind": "folder", "classes": "classes.txt", "crop": 64, "scale": [160, 64]},
        "model": {"kind": "llfpn", "backbone": "unip_vit_tiny_patch16", "drop_path_rate": 0.1},
        "optim": {"lr": 1e-3, "iterations": 12, "warmup_iters": 2},
        "eval": {"every": 100, "stride": 43, "overlays": 2},
        "device": "cpu",
        "log_every": 1,
        "checkpoint_every": 3,
    }
    cfg["data"].update(batch_size=2, workers=0)
    for key, value in over.items():
        _set_override(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def segset(tmp_path_factory) -> Path:
    from unip.data.segdemo import make_demo_segset

    root = tmp_path_factory.mktemp("seg") / "set"
    make_demo_segset(root, n_train=8, n_test=3, size=(64, 80), seed=1)
    return root


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_recipes_validate_with_the_papers_schedules():
    iters = {"soda": 14400, "mfnet": 9800, "scut": 16800}
    names = {p.parent.name + "/" + p.stem for p in RECIPES}
    for mode in ("finetune", "linprobe"):
        for kind in iters:
            for size in "tsb":
                assert f"{mode}/{kind}_unip_{size}" in names
    for path in RECIPES:
        cfg = load_finetune_config(path)
        if path.stem == "demo_cpu":
            continue
        assert cfg.optim.iterations == iters[cfg.data.kind] and cfg.data.batch_size == 8
        assert cfg.data.crop == 512 and cfg.eval.stride == 341 and cfg.data.scale == (2048, 512)
        linear = path.parent.name == "linprobe"
        assert cfg.model.kind == ("linear" if linear else "llfpn")
        assert cfg.optim.layer_decay == (1.0 if linear else 0.85)
        assert cfg.optim.lr == 1e-4 and cfg.optim.warmup_iters == 1500  # UNIP's configs
        assert cfg.eval.every == 800


def test_config_errors_name_the_key():
    with pytest.raises(UnipError, match=r"data\.kind"):
        load_finetune_config(None, data={"data": {"kind": "voc"}})
    with pytest.raises(UnipError, match="warmup_iters"):
        load_finetune_config(None, ["optim.warmup_iters=20"], data=tiny())


def test_lr_follows_mmcv_warmup_and_poly():
    cfg = load_finetune_config(None, ["optim.iterations=100", "optim.warmup_iters=10"], data=tiny())
    for step in range(100):
        regular = (1 - step / 100) ** 1.0  # mmcv PolyLrUpdaterHook, min_lr 0
        if step < 10:  # mmcv linear warmup: regular * (1 - (1 - i/w) * (1 - ratio))
            regular *= 1 - (1 - step / 10) * (1 - 1e-6)
        assert lr_factor(step, cfg) == pytest.approx(regular, rel=1e-12, abs=1e-15)


def test_step_sampler_splits_each_epoch_across_ranks():
    n, b, world = 10, 2, 2
    got = [list(StepSampler(n, 0, b, r, world, 0, 5)) for r in range(world)]
    positions = sorted(g for r in got for _, g in r)
    assert positions == list(range(5 * b * world))  # every stream position once
    first_epoch = sorted(i for r in got for i, g in r if g < n)
    assert first_epoch == list(range(n))  # an epoch is a permutation
    resumed = list(StepSampler(n, 0, b, 1, world, 3, 5))
    assert resumed == got[1][3 * b :]  # a resumed rank goes on where it stopped


def test_a_few_steps_lower_the_loss_and_eval_writes_results(segset, tmp_path):
    cfg = load_finetune_config(None, ["optim.iterations=20"], data=tiny())
    out = tmp_path / "run"
    result = finetune(cfg, segset, out)
    losses = [r["loss"] for r in rows(out) if "loss" in r]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert 0 <= result["mIoU"] <= 100 and len(result["IoU"]) == 5
    assert (out / "best.pt").is_file() and len(list((out / "predictions").glob("*.png"))) == 2
    evals = [r for r in rows(out) if "val/mIoU" in r]
    assert evals[-1]["val/mIoU"] == pytest.approx(result["mIoU"])


def test_resume_matches_an_uninterrupted_run(segset, tmp_path):
    cfg = load_finetune_config(None, ["optim.iterations=6"], data=tiny())
    finetune(cfg, segset, tmp_path / "a")
    first = load_finetune_config(None, ["optim.iterations=6", "max_steps=3"], data=tiny())
    finetune(first, segset, tmp_path / "b")
    finetune(cfg, segset, tmp_path / "b")  # resumes from step 3
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert [r["loss"] for r in a if "loss" in r] == [r["loss"] for r in b if "loss" in r]
    sa = torch.load(tmp_path / "a/checkpoints/step-00000006.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b/checkpoints/step-00000006.pt", weights_only=True)["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_under_another_config_is_refused(segset, tmp_path):
    finetune(load_finetune_config(None, ["max_steps=1"], data=tiny()), segset, tmp_path / "r")
    other = load_finetune_config(None, ["optim.lr=0.01"], data=tiny())
    with pytest.raises(UnipError, match=r"optim\.lr"):
        finetune(other, segset, tmp_path / "r")


def test_a_bad_training_image_fails_before_the_run_naming_it(segset, tmp_path):
    import shutil

    root = tmp_path / "set"
    shutil.copytree(segset, root)
    victim = sorted((root / "images").glob("*.png"))[0]
    victim.write_bytes(b"not an image")
    out = tmp_path / "run"
    with pytest.raises(UnipError, match=victim.stem):
        finetune(load_finetune_config(None, data=tiny()), root, out)
    assert not out.exists()


def test_unip_eval_recomputes_metrics_from_the_checkpoint(segset, tmp_path):
    from typer.testing import CliRunner

    from unip.cli import app
    from unip.data.segsets import open_segset, read_classes

    cfg = load_finetune_config(None, ["optim.iterations=4"], data=tiny())
    result = finetune(cfg, segset, tmp_path / "run")
    args = ["eval", "--checkpoint", str(tmp_path / "run/best.pt"), "--data", str(segset)]
    args += ["--split", "test", "--out", str(tmp_path / "ev"), "--device", "cpu"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text(), parse_constant=_refuse)
    assert metrics["mIoU"] == pytest.approx(result["mIoU"])  # the same model, the same split
    # one overlay: the image, then the prediction and the labels blended over it
    test = open_segset("folder", segset, "test", classes=read_classes(segset / "classes.txt"))
    image, label, name = test[0]
    panel = np.asarray(Image.open(tmp_path / "ev/predictions" / f"{name}.png")).astype(float)
    w = image.shape[1]
    assert panel.shape == (image.shape[0], 3 * w, 3)
    np.testing.assert_array_equal(panel[:, :w, 0], image)
    colours = np.array(test.palette, float)[label]
    np.testing.assert_allclose(panel[:, 2 * w :], 0.5 * image[..., None] + 0.5 * colours, atol=1)


def _refuse(constant: str):
    raise AssertionError(f"metrics.json holds {constant}, which is not JSON")


def test_unip_eval_errors_are_one_line(segset, tmp_path):
    from typer.testing import CliRunner

    from unip.cli import app

    bogus = tmp_path / "x.pt"
    torch.save({"model": {}}, bogus)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    import argparse

    official = tmp_path / "unip_small.pth"  # as official UNIP/MAE files: an args Namespace
    torch.save({"model": {}, "args": argparse.Namespace(model="unip_vit_small")}, official)
    distilled = tmp_path / "step-00000001.pt"
    torch.save({"model": {}, "config": {"student": {"model": "unip_vit_tiny_patch16"}}}, distilled)
    cases = (
        (tmp_path / "none.pt", "no such file"),
        (bogus, "not a `unip finetune`"),
        (garbage, "garbage.pt: not a readable checkpoint"),
        (distilled, "is a `unip train` (distillation) checkpoint"),
        (official, "unip_small.pth is not a `unip finetune` checkpoint"),
    )
    for ckpt, message in cases:
        r = CliRunner().invoke(
            app, ["eval", "--checkpoint", str(ckpt), "--data", str(segset), "--out", "o"]
        )
        assert r.exit_code == 1 and message in r.output, r.output
        assert "Traceback" not in r.output


def test_ddp_with_two_cpu_processes(segset, tmp_path):
    """torchrun, gloo: the main process logs once, and the evaluation split across the two
    ranks (counts summed) equals a one-process evaluation of the same checkpoint."""
    import os
    import subprocess
    import sys

    import yaml

    from unip.evaluate import run_eval

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny(**{"optim.iterations": 3})))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", "-m", "unip", "finetune", str(cfg), "--data", str(segset), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [r["step"] for r in rows(out) if "loss" in r] == [1, 2, 3]
    ddp_miou = [r for r in rows(out) if "val/mIoU" in r][-1]["val/mIoU"]
    single = run_eval(out / "checkpoints/step-00000003.pt", segset, "test", tmp_path / "e", "cpu")
    assert single["mIoU"] == pytest.approx(ddp_miou)
    # `torchrun -m unip eval`: ranks share the split, rank 0 writes and prints, once
    cmd = [*cmd[:8], "eval", "--checkpoint", str(out / "checkpoints/step-00000003.pt")]
    cmd += ["--data", str(segset), "--split", "test", "--out", str(tmp_path / "e2")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count('"mIoU"') == 1
    written = json.loads((tmp_path / "e2/metrics.json").read_text())
    assert written["mIoU"] == pytest.approx(single["mIoU"]) and written["IoU"] == single["IoU"]
    first = (segset / "test.txt").read_text().split()[:2]  # eval.overlays: the split's first
    assert sorted(p.stem for p in (tmp_path / "e2/predictions").glob("*.png")) == sorted(first)


def test_unip_eval_needs_only_the_fine_tuned_checkpoint(segset, tmp_path, monkeypatch):
    """The backbone's architecture is recorded in the checkpoint (here a distilled student with
    4 heads in its last block, read off its pre-training checkpoint): `unip eval` works with
    that checkpoint moved elsewhere and the pre-training file gone."""
    import shutil

    from unip.evaluate import run_eval
    from unip.models import create_student

    student = create_student("unip_vit_tiny_patch16", last_heads=4, img_size=64)
    pre = tmp_path / "distill" / "step-00000007.pt"
    pre.parent.mkdir()
    config = {"student": {"model": "unip_vit_tiny_patch16", "last_heads": 4}}
    torch.save({"model": student.state_dict(), "step": 7, "config": config}, pre)
    over = {"model.backbone": str(pre), "model.checkpoint": None}
    cfg = load_finetune_config(None, ["optim.iterations=2"], data=tiny(**over))
    result = finetune(cfg, segset, tmp_path / "run")
    state = torch.load(tmp_path / "run/best.pt", weights_only=True)
    assert state["backbone_arch"]["kwargs"]["last_heads"] == 4
    moved = tmp_path / "elsewhere" / "best.pt"
    moved.parent.mkdir()
    shutil.copy(tmp_path / "run/best.pt", moved)
    shutil.rmtree(tmp_path / "distill")
    monkeypatch.chdir(moved.parent)
    again = run_eval(moved, segset, "test", tmp_path / "ev", "cpu")
    assert again["mIoU"] == pytest.approx(result["mIoU"])


def test_an_architecture_record_takes_only_plain_known_keys():
    from unip.models.checkpoints import check_arch, create_vit

    ok = {"name": "unip_vit_tiny_patch16", "kwargs": {"img_size": 64, "last_heads": 4}}
    assert create_vit(ok).blocks[-1].attn.num_heads == 4
    for bad in (
        {"name": "vit_tiny_patch16_224", "kwargs": {"checkpoint_path": "/etc/passwd"}},
        {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": object()}},
        {"name": 3, "kwargs": {}},
        {"kwargs": None},
    ):
        with pytest.raises(UnipError, match="architecture record"):
            check_arch(bad)


def test_a_checkpoint_without_an_architecture_record_rebuilds_from_the_config(segset, tmp_path):
    from unip.evaluate import run_eval

    cfg = load_finetune_config(None, ["optim.iterations=2"], data=tiny())
    result = finetune(cfg, segset, tmp_path / "run")
    state = torch.load(tmp_path / "run/best.pt", weights_only=True)
    del state["backbone_arch"]  # as written before architectures were recorded
    torch.save(state, tmp_path / "old.pt")
    again = run_eval(tmp_path / "old.pt", segset, "test", tmp_path / "ev", "cpu")
    assert again["mIoU"] == pytest.approx(result["mIoU"])


def test_padding_is_zero_in_the_model_input(segset, tmp_path, monkeypatch):
    """mmseg pads after Normalize: the padded border enters the model as 0, not as the
    normalised value of black (-2.02)."""
    import unip.finetune as ft

    seen = []
    build = ft.build_model

    def recording(*args, **kw):
        model = build(*args, **kw)
        model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()))
        return model

    monkeypatch.setattr(ft, "build_model", recording)
    # 80x64 images at scale (160, 64), ratio 0.5: 40x32, so every 64-crop is padded
    over = {"data.ratio_range": [0.5, 0.5], "eval.every": 1000}
    finetune(load_finetune_config(None, ["max_steps=2"], data=tiny(**over)), segset, tmp_path / "r")
    train_inputs = [x for x in seen if x.shape[-1] == 64 and x.shape[0] == 2][:2]
    assert len(train_inputs) == 2
    for x in train_inputs:
        assert (x[:, :, 32:] == 0).all() and (x[:, :, :, 40:] == 0).all()
        assert (x[:, :, :32, :40] != 0).float().mean() > 0.9


def test_zero_padding_against_a_loop():
    from unip.finetune import zero_padding

    x = torch.randn(3, 3, 8, 10)
    size = torch.tensor([[8, 10], [5, 7], [1, 2]])
    want = x.clone()
    for b, (h, w) in enumerate(size.tolist()):
        for i in range(8):
            for j in range(10):
                if i >= h or j >= w:
                    want[b, :, i, j] = 0
    assert torch.equal(zero_padding(x.clone(), size), want)


def test_one_image_per_step_is_refused_before_the_run(segset, tmp_path):
    from unip.finetune import check_batch

    out = tmp_path / "run"
    cfg = load_finetune_config(None, ["data.batch_size=1"], data=tiny())
    with pytest.raises(UnipError, match=r"data\.batch_size=1: the UperNet head's BatchNorm"):
        finetune(cfg, segset, out)
    assert not out.exists()
    check_batch(cfg, world=2, sync_bn=True)  # SyncBatchNorm over 2 GPUs: 2 images per BN
    with pytest.raises(UnipError):
        check_batch(cfg, world=2, sync_bn=False)
    probe = load_finetune_config(None, ["data.batch_size=1", "model.kind=linear"], data=tiny())
    check_batch(probe, world=1, sync_bn=False)  # the probe's BN sees every pixel


def test_a_bad_validation_image_fails_before_the_run(segset, tmp_path):
    import shutil

    root = tmp_path / "set"
    shutil.copytree(segset, root)
    victim = root / "images" / f"{(root / 'test.txt').read_text().split()[0]}.png"
    victim.write_bytes(b"\x89PNG broken")
    out = tmp_path / "run"
    with pytest.raises(UnipError, match=rf"unreadable samples in test: {victim.stem}"):
        finetune(load_finetune_config(None, data=tiny()), root, out)
    assert not out.exists()


def test_min_lr_is_absolute_in_every_group_as_mmcv():
    """mmcv's poly: (base - min_lr) x (1 - i/T)^p + min_lr, with each group's own base lr."""
    from unip.finetune import build_model, make_optimizer

    over = ["optim.iterations=10", "optim.warmup_iters=3", "optim.min_lr=1e-5", "optim.power=2"]
    cfg = load_finetune_config(None, over, data=tiny(**{"optim.layer_decay": 0.5}))
    model = build_model(cfg, 3)
    optimizer, sched = make_optimizer(cfg, model, torch.device("cpu"))
    bases = [g["initial_lr"] for g in optimizer.param_groups]
    assert len(set(bases)) > 3 and min(bases) < 1e-5 < max(bases)  # some below min_lr
    for i in range(10):
        for base, group in zip(bases, optimizer.param_groups, strict=True):
            regular = (base - 1e-5) * (1 - i / 10) ** 2 + 1e-5
            if i < 3:
                regular *= 1 - (1 - i / 3) * (1 - 1e-6)
            assert group["lr"] == pytest.approx(regular, rel=1e-9, abs=1e-15)
        optimizer.step()
        sched.step()


def test_metrics_json_is_strict_json():
    from unip.evaluate import json_safe

    text = json.dumps(json_safe({"mIoU": 50.0, "IoU": [float("nan"), 1.0]}), allow_nan=False)
    assert json.loads(text) == {"mIoU": 50.0, "IoU": [None, 1.0]}


def test_label_map_from_the_config(tmp_path):
    from unip.finetune import open_split

    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.full((4, 4), 90, np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.array([[0, 5, 9, 255]] * 4, np.uint8)).save(root / "labels" / "a.png")
    (root / "train.txt").write_text("a\n")
    (root / "classes.txt").write_text("bg\nthing\n")
    cfg = load_finetune_config(None, ["data.label_map={0: 0, 5: 1, 9: 255}"], data=tiny())
    _, label, _ = open_split(cfg, root, "train")[0]
    assert label[0].tolist() == [0, 1, 255, 255]
    cfg = load_finetune_config(None, ["data.label_map={0: 0, 5: 1}"], data=tiny())
    with pytest.raises(UnipError, match=r"label ids \[9\] are not in .*data\.label_map"):
        open_split(cfg, root, "train")[0]
