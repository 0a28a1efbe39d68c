"""The Ray engine: the same units as Ray tasks give the local engine's bytes, resume across
engines, and stop the build with the task's own error.

One local Ray instance serves the module (the engine reuses a Ray the caller initialised); one
CLI run in a subprocess starts and shuts down its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infmix.build import build
from infmix.cli import app
from infmix.config import load_config
from infmix.errors import InfmixError
from infmix.process import TransientError
from tests.conftest import REPO, demo_config_dict

# timing and how the run was made: the only stats allowed to differ between engines
RUN_FIELDS = ("wall_seconds", "units_processed_this_run", "workers", "out")
TIMING_FIELDS = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason='the ray engine needs Ray: pip install ".[ray]"')
    from infmix.engines.ray import session

    with session(ray, None, 2):  # how the engine starts its own local instance
        yield ray


@pytest.fixture(scope="module")
def cfg(demo_root):
    """The demo recipe with near-duplicate removal on: units also hold embeddings."""
    return load_config(None, data=demo_config_dict(demo_root, near=True, chunk_size=8))


@pytest.fixture(scope="module")
def reference(cfg, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    build(cfg, out, workers=1)
    return out


def outputs(out: Path) -> dict[str, bytes]:
    """Every file a build leaves outside its work folder, stats.json aside."""
    skip = {"stats.json", ".infmix.lock"}
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in skip and p.relative_to(out).parts[0] != "work"
    }


def comparable_stats(out: Path) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    for k in RUN_FIELDS:
        del stats[k]
    for s in [*stats["sources"].values(), stats["total"]]:
        for k in TIMING_FIELDS:
            del s[k]
    return stats


def assert_same_build(out: Path, reference: Path) -> None:
    ref = outputs(reference)
    assert sum(n.endswith(".tar") for n in ref) > 1
    assert {"manifest.parquet", "rejected.jsonl", "_info.json", "duplicates.parquet"} <= ref.keys()
    got = outputs(out)
    assert got.keys() == ref.keys()
    assert [n for n in ref if got[n] != ref[n]] == [], "files differ between engines"
    assert comparable_stats(out) == comparable_stats(reference)
    # the work folder is keyed by config + environment, never by the engine
    assert [p.name for p in (out / "work").iterdir()] == [
        p.name for p in (reference / "work").iterdir()
    ]
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"


def test_ray_build_equals_local_build(ray_instance, cfg, reference, tmp_path):
    stats = build(cfg, tmp_path / "out", engine="ray")  # no --workers: Ray schedules
    assert stats["units_processed_this_run"] > 2
    assert_same_build(tmp_path / "out", reference)


def test_cli_engine_ray(ray_instance, cfg, reference, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text((reference / "config.yaml").read_text())
    args = ["build", str(config), "--out", str(tmp_path / "out"), "--engine", "ray"]
    r = CliRunner().invoke(app, [*args, "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "total" in r.stdout
    assert_same_build(tmp_path / "out", reference)


def test_local_build_resumed_under_ray(ray_instance, cfg, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    # as if the local build had been killed after some units: drop the others and all that
    # follows them (shards, reports)
    (chunks,) = out.glob("work/*/chunks")
    redo = {"000001", "000003", "000004"}
    for p in chunks.iterdir():
        if p.name.split(".")[0] in redo:
            p.unlink()
    shutil.rmtree(out / "shards")
    for name in ("_info.json", "manifest.parquet", "rejected.jsonl", "stats.json"):
        (out / name).unlink()
    stats = build(cfg, out, engine="ray", workers=2)
    assert stats["units_processed_this_run"] == len(redo)
    assert_same_build(out, reference)


def test_transient_error_in_a_task_stops_the_build(ray_instance, demo_root, tmp_path):
    """An I/O error of the machine (EIO here) stops the build with the task's own error."""
    eio = tmp_path / "eio"
    eio.mkdir()
    (eio / "frame.jpg").symlink_to("/proc/self/mem")  # a regular file whose read fails: EIO
    data = demo_config_dict(demo_root)
    data["sources"].append(
        {"name": "eio", "kind": "folder", "root": str(eio), "modality": "infrared"}
    )
    cfg = load_config(None, data=data)
    with pytest.raises(TransientError, match=r"frame\.jpg: OSError: .*Input/output error"):
        build(cfg, tmp_path / "out", engine="ray")
    with pytest.raises(TransientError, match=r"frame\.jpg: OSError: .*Input/output error"):
        build(cfg, tmp_path / "local", workers=1)  # what the local engine raises


def test_nodes_must_see_the_work_folder(ray_instance, monkeypatch, tmp_path):
    from contextlib import contextmanager

    from infmix.engines import ray as engine

    @contextmanager
    def unseen(folder):  # a probe the tasks cannot find: a node without the shared disk
        yield str(folder / "elsewhere"), "token"

    monkeypatch.setattr(engine, "probe", unseen)
    with pytest.raises(InfmixError, match=r"cannot see the work folder .*shared filesystem"):
        engine.run_units(dict, [()], 1, 10**6, print, shared=tmp_path)


def test_nodes_must_see_the_source_roots(ray_instance, tmp_path):
    """Without the check, a node lacking them would reject every image as unreadable."""
    from infmix.engines import ray as engine

    def unmount(folder):  # runs on the node, after the driver saw the folder
        folder.rmdir()
        return {}

    root = tmp_path / "mounted-here-only"
    root.mkdir()
    engine.run_units(unmount, [(root,)], 1, 10**6, print)  # no check: passes
    root.mkdir()
    with pytest.raises(InfmixError, match=r"cannot see the source folder .*mounted-here-only"):
        engine.run_units(unmount, [(root,), (root,)], 1, 10**6, print, roots=[root])


def test_nodes_must_have_the_drivers_versions(ray_instance, monkeypatch, tmp_path):
    from infmix import outdir
    from infmix.engines import ray as engine

    real = outdir.environment()
    monkeypatch.setattr(outdir, "environment", lambda: {**real, "pillow": "0.0"})
    with pytest.raises(InfmixError, match=r"pillow 0\.0 here, .* there.*same environment"):
        engine.run_units(dict, [()], 1, 10**6, print, shared=tmp_path)


def test_engine_choices_and_missing_ray(cfg, tmp_path, monkeypatch):
    with pytest.raises(InfmixError, match="engine must be one of local, ray"):
        build(cfg, tmp_path / "a", engine="spark")
    with pytest.raises(InfmixError, match="--ray-address needs --engine ray"):
        build(cfg, tmp_path / "b", ray_address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(InfmixError, match=r'pip install "infmix-unip\[ray\]"'):
        build(cfg, tmp_path / "c", engine="ray")
    assert not (tmp_path / "c").exists(), "checked before the output folder is touched"


def test_cli_starts_and_stops_its_own_ray(ray_instance, reference, tmp_path):
    """A subprocess: a fresh local instance (not a stray RAY_ADDRESS), shut down at the end,
    with nothing written to ~/.ray."""
    config = tmp_path / "cfg.yaml"
    config.write_text((reference / "config.yaml").read_text())
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_ADDRESS": "10.255.255.1:6379"}
    cmd = [sys.executable, "-m", "infmix", "build", str(config), "--out", str(tmp_path / "out")]
    p = subprocess.run(
        [*cmd, "--engine", "ray", "--workers", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert_same_build(tmp_path / "out", reference)
    assert not (home / ".ray").exists()
