"""The real command lines: demo end to end, one-line errors, debug tracebacks, unip info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from infmix.cli import app
from tests.conftest import REPO
from unip.cli import app as unip_app

runner = CliRunner()


def test_demo_end_to_end_as_in_readme(tmp_path):
    """The README's demo: demo-sources into demo-data, then build pipelines/demo.yaml."""
    r = runner.invoke(app, ["demo-sources", str(tmp_path / "demo-data")])
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "demo.yaml"
    cfg.write_text((REPO / "pipelines" / "demo.yaml").read_text())
    env = {**os.environ, "COLUMNS": "120"}
    p = subprocess.run(
        [sys.executable, "-m", "infmix", "build", str(cfg), "--out", "demo-out", "--workers", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert "total" in p.stdout and "51 samples" in p.stdout  # summary table
    assert "near_duplicate: 9" in p.stdout  # 3 video sequences of slowly moving frames
    assert "img/s" in p.stderr  # progress with a rate
    out = tmp_path / "demo-out"
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 51
    stats = json.loads((out / "stats.json").read_text())
    assert stats["sources"]["ir_video"]["kept"] == 3
    assert stats["sources"]["ir_video"]["dropped"] == {"near_duplicate": 9}
    assert (out / "duplicates.parquet").is_file() and (out / "duplicates.png").is_file()


def test_demo_sources_are_deterministic(tmp_path):
    for d in ("a", "b"):
        assert runner.invoke(app, ["demo-sources", str(tmp_path / d)]).exit_code == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        for f in files_a
        if (tmp_path / "a" / f).is_file()
    )


def _bad_config(tmp_path: Path, demo_root: Path) -> Path:
    data = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    data["data_root"] = str(demo_root)
    data["sources"][1]["frame_stride"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_error_is_one_clear_line(tmp_path, demo_root):
    r = runner.invoke(
        app, ["build", str(_bad_config(tmp_path, demo_root)), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 1
    assert "sources.ir_video.frame_stride" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "o").exists()  # failed before any work


def test_override_error_and_missing_file(tmp_path, demo_root):
    cfg = tmp_path / "demo.yaml"
    data = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    data["data_root"] = str(demo_root)
    cfg.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["build", str(cfg), "--out", str(tmp_path / "o"), "process.max_side=2"])
    assert r.exit_code == 1 and "process.max_side" in r.output
    r = runner.invoke(app, ["build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "config file not found" in r.output


def test_debug_env_shows_traceback(tmp_path, demo_root):
    cfg = _bad_config(tmp_path, demo_root)
    env = {**os.environ, "INFMIX_DEBUG": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "infmix", "build", str(cfg), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode != 0 and "Traceback" in p.stderr and "ConfigError" in p.stderr


def test_refuses_foreign_non_empty_out(tmp_path, demo_root):
    cfg = tmp_path / "demo.yaml"
    data = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    data["data_root"] = str(demo_root)
    cfg.write_text(yaml.safe_dump(data))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("keep me")
    r = runner.invoke(app, ["build", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "not an infmix build folder" in r.output
    assert (tmp_path / "o" / "precious.txt").read_text() == "keep me"


def test_help_and_console_scripts():
    assert "build" in runner.invoke(app, ["--help"]).output
    for exe in ("infmix", "unip"):
        p = subprocess.run(
            [str(Path(sys.executable).with_name(exe)), "--help"], capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr


def test_unip_info_describes_a_corpus(tmp_path):
    (tmp_path / "c").mkdir()
    r = runner.invoke(unip_app, ["info", "--corpus", str(tmp_path / "c")])
    assert r.exit_code == 1 and "no _info.json" in r.output
    info = {"splits": {"train": {"num_samples": 7, "filenames": ["shards/a.tar"]}}}
    (tmp_path / "c" / "_info.json").write_text(json.dumps(info))
    r = runner.invoke(unip_app, ["info", "--corpus", str(tmp_path / "c")])
    assert r.exit_code == 0
    assert json.loads(r.output)["corpus"]["samples"] == 7
