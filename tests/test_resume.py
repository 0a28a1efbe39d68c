"""Crash safety: SIGKILL a real `infmix build` subprocess again and again, then let it finish.

After every kill, each tar at a final path must be complete and equal to the shard of an
uninterrupted build; the finished build must equal the uninterrupted one byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from infmix.demo import thermal_frame, write_demo_sources


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume-data")
    write_demo_sources(root, seed=1)
    rng = np.random.default_rng(5)
    from PIL import Image

    for i in range(720):
        p = root / "extra" / f"d{i // 40}" / f"{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((thermal_frame(rng, 96, 128) * 255).astype(np.uint8)).save(p)
    cfg = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / "demo.yaml").read_text())
    cfg["data_root"] = str(root)
    cfg["sources"].append(
        {"name": "extra", "kind": "folder", "root": "extra", "modality": "infrared"}
    )
    cfg["process"]["chunk_size"] = 6
    cfg["shards"]["samples_per_shard"] = 8
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, root


def run_build(cfg: Path, out: Path, workers: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "infmix",
        "build",
        str(cfg),
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def final_files(out: Path) -> dict[str, bytes]:
    names = ["_info.json", "manifest.parquet", "rejected.jsonl"]
    files = {n: (out / n).read_bytes() for n in names}
    files.update({p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")})
    return files


def assert_complete_tars(out: Path, reference: dict[str, bytes]) -> int:
    shards = list((out / "shards").glob("*.tar")) if (out / "shards").exists() else []
    for p in shards:
        with tarfile.open(p) as tar:  # a truncated tar would raise or differ
            assert all(tar.extractfile(m).read() is not None for m in tar.getmembers())
        assert p.read_bytes() == reference[p.name], f"{p.name} differs after a kill"
    return len(shards)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume(setup, tmp_path):
    cfg, _ = setup
    ref = tmp_path / "reference"
    t0 = time.perf_counter()
    proc = run_build(cfg, ref, workers=2)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import infmix.build"], check=True)
    startup = time.perf_counter() - t0
    reference = final_files(ref)
    assert len([n for n in reference if n.endswith(".tar")]) > 20

    out = tmp_path / "killed"
    # kills spread over the work after start-up; each rerun resumes, so they add up
    delays = [startup + f * (total - startup) for f in (0.2, 0.2, 0.3, 0.3, 0.4, 0.5, 0.6)]
    kills, phases = 0, set()
    for delay in delays:
        proc = run_build(cfg, out, workers=2)
        time.sleep(delay)
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)  # the build and its workers, like a crash
        proc.wait()
        kills += 1
        n_shards = assert_complete_tars(out, reference)
        phases.add("sharding" if n_shards else "processing")
    assert kills >= 3, "the build finished too fast to be interrupted"
    proc = run_build(cfg, out, workers=2)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert final_files(out) == reference
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"
    assert "processing" in phases, phases


@pytest.mark.slow
def test_sigkill_while_writing_shards(setup, tmp_path):
    cfg, _ = setup
    ref = tmp_path / "reference"
    assert run_build(cfg, ref, workers=2).wait(timeout=300) == 0
    reference = final_files(ref)
    n_total = len([n for n in reference if n.endswith(".tar")])

    out = tmp_path / "killed"
    proc = run_build(cfg, out, workers=2)
    shards = out / "shards"
    while proc.poll() is None and not (shards.exists() and any(shards.iterdir())):
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = assert_complete_tars(out, reference)
    assert written < n_total, "the build finished before it could be killed mid-sharding"
    assert not (out / "_info.json").exists()  # reports come last
    assert run_build(cfg, out, workers=1).wait(timeout=300) == 0
    assert final_files(out) == reference


@pytest.mark.parametrize("damage", ["flip_image_bytes", "empty_records"])
def test_damaged_work_unit_is_reported_then_redone(demo_root, tmp_path, damage):
    """Work units skip fsync; a unit a machine crash left damaged must never reach a shard."""
    from infmix.build import build
    from infmix.config import load_config
    from infmix.errors import InfmixError
    from tests.conftest import demo_config_dict

    cfg = load_config(None, data=demo_config_dict(demo_root))
    build(cfg, tmp_path / "ref", workers=1)
    reference = final_files(tmp_path / "ref")
    out = tmp_path / "out"
    build(cfg, out, workers=1)
    # as if the machine died after unit 1 was committed but before its data reached the disk
    for p in [*out.glob("shards/*"), out / "_info.json"]:
        p.unlink()
    (chunks,) = out.glob("work/*/chunks")  # work/<config+environment fingerprint>/
    unit_bin, unit_jsonl = chunks / "000001.bin", chunks / "000001.jsonl"
    if damage == "flip_image_bytes":
        data = bytearray(unit_bin.read_bytes())
        data[100:200] = bytes(100)
        unit_bin.write_bytes(bytes(data))
    else:
        unit_jsonl.write_text("")
    with pytest.raises(InfmixError, match="work unit 1 was damaged"):
        build(cfg, out, workers=1)
    assert not unit_jsonl.exists()
    assert_complete_tars(out, reference)  # shards written before the check are correct ones
    stats = build(cfg, out, workers=1)
    assert stats["units_processed_this_run"] == 1
    assert final_files(out) == reference
