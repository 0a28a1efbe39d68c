"""`unip finetune` / `unip eval`: recipes, schedule, data order, learning, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
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
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
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


def test_unip_eval_errors_are_one_line(segset, tmp_path):
    from typer.testing import CliRunner

    from unip.cli import app

    bogus = tmp_path / "x.pt"
    torch.save({"model": {}}, bogus)
    for ckpt, message in ((tmp_path / "none.pt", "no such file"), (bogus, "not a `unip finetune`")):
        r = CliRunner().invoke(
            app, ["eval", "--checkpoint", str(ckpt), "--data", str(segset), "--out", "o"]
        )
        assert r.exit_code == 1 and message in r.output


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
