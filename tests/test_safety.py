"""What an adversarial review found, kept fixed: hostile files, hostile folders, crashes and
concurrent builds, leaking metadata, environment changes."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from infmix import outdir
from infmix.build import build
from infmix.cli import app
from infmix.config import load_config
from infmix.errors import ConfigError, InfmixError

runner = CliRunner()


def gray(rng, h=48, w=64) -> np.ndarray:
    return (rng.random((h, w)) * 255).astype(np.uint8)


def folder_cfg(root: Path, **extra):
    data = {
        "sources": [{"name": "s", "kind": "folder", "root": str(root), "modality": "infrared"}],
        "dedup": {"near": {"enabled": False}},
    }
    for k, v in extra.items():
        data[k] = v
    return load_config(None, data=data)


@pytest.fixture
def images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    root.mkdir()
    for i in range(6):
        Image.fromarray(gray(rng)).save(root / f"{i}.png")
    return root


def test_fifo_is_rejected_not_read(images, tmp_path):
    os.mkfifo(images / "pipe.jpg")
    t0 = time.perf_counter()
    stats = build(folder_cfg(images), tmp_path / "o", workers=1)
    assert time.perf_counter() - t0 < 30
    assert stats["sources"]["s"]["dropped"] == {"not_a_file": 1}


def test_overwrite_never_deletes_a_foreign_folder(images, tmp_path):
    proj = tmp_path / "proj"
    (proj / "work").mkdir(parents=True)
    (proj / "work" / "thesis.tex").write_text("years of work")
    (proj / "config.yaml").write_text("mine")
    with pytest.raises(InfmixError, match="not an infmix build folder"):
        build(folder_cfg(images), proj, workers=1, overwrite=True)
    assert (proj / "work" / "thesis.tex").read_text() == "years of work"
    assert (proj / "config.yaml").read_text() == "mine"


def test_second_build_into_the_same_out_is_refused(images, tmp_path):
    out = tmp_path / "o"
    with outdir.claim(out, "x", overwrite=False), pytest.raises(InfmixError, match="another"):
        build(folder_cfg(images), out, workers=1)


def test_leftover_temporaries_do_not_block_or_stay(images, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".config.yaml.123.tmp").write_text("half")  # killed while saving the config
    build(folder_cfg(images), out, workers=1)
    assert not list(out.rglob("*.tmp"))


def test_other_environment_is_refused(images, tmp_path):
    out = tmp_path / "o"
    build(folder_cfg(images), out, workers=1)
    marker = json.loads((out / outdir.MARKER).read_text())
    marker["environment"]["pillow"] = "1.0"
    (out / outdir.MARKER).write_text(json.dumps(marker))
    with pytest.raises(InfmixError, match="another environment"):
        build(folder_cfg(images), out, workers=1)
    build(folder_cfg(images), out, workers=1, overwrite=True)


def test_workers_exit_when_their_build_is_killed(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "src"
    root.mkdir()
    for i in range(400):
        Image.fromarray(gray(rng, 240, 320)).save(root / f"{i}.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "sources": [{"name": "s", "kind": "folder", "root": str(root), "modality": "rgb"}],
                "process": {"chunk_size": 4},
            }
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infmix",
            "build",
            str(cfg),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: set[int] = set()
    deadline = time.time() + 60
    while len(children) < 2 and time.time() < deadline:
        for task in Path(f"/proc/{proc.pid}/task").glob("*/children"):
            children |= {int(c) for c in task.read_text().split()}
        time.sleep(0.05)
    assert children, "no worker started"
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers become orphans
    proc.wait()
    deadline = time.time() + 10
    alive = set(children)
    while alive and time.time() < deadline:
        alive = {
            c
            for c in alive
            if Path(f"/proc/{c}").exists()
            and "Z" not in Path(f"/proc/{c}/stat").read_text().split()[2]
        }
        time.sleep(0.1)
    assert not alive, f"orphaned workers still running: {alive}"


def test_odd_file_names(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "src"
    root.mkdir()
    Image.fromarray(gray(rng)).save(root / "1²2.png")
    Image.fromarray(gray(rng)).save(root / "café 01.png")
    raw = os.fsencode(root) + b"/\xff\xfe.png"
    Image.fromarray(gray(rng)).save(raw.decode(errors="surrogateescape"))
    Image.fromarray(gray(rng)).save(root / ("x" * 200 + ".png"))
    stats = build(folder_cfg(root), tmp_path / "o", workers=1)
    assert stats["total"]["kept"] == 4
    rows = pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()
    assert "\\xff\\xfe.png" in {r["path"] for r in rows}
    assert all(len(r["key"]) <= 160 and "." not in r["key"] for r in rows)


def test_machine_errors_stop_the_build_instead_of_rejecting(images, tmp_path, monkeypatch):
    import infmix.process as process

    real = process.open if hasattr(process, "open") else open

    def flaky(path, *a, **k):
        if str(path).endswith("3.png"):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *a, **k)

    monkeypatch.setattr(process, "open", flaky, raising=False)
    with pytest.raises(InfmixError, match="Input/output error"):
        build(folder_cfg(images), tmp_path / "o", workers=1)
    monkeypatch.undo()
    stats = build(folder_cfg(images), tmp_path / "o", workers=1)
    assert stats["total"]["kept"] == 6 and stats["total"]["dropped"] == {}


def test_only_raster_formats_are_decoded(images, tmp_path):
    (images / "evil.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    buf = io.BytesIO()
    Image.fromarray(gray(np.random.default_rng(3))).save(buf, "GIF")
    (images / "anim.jpg").write_bytes(buf.getvalue())
    stats = build(folder_cfg(images), tmp_path / "o", workers=1)
    assert stats["sources"]["s"]["dropped"] == {"not_an_image": 2}


def _shard_images(out: Path) -> list[bytes]:
    import tarfile

    blobs = []
    for p in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(p) as tar:
            blobs += [tar.extractfile(m).read() for m in tar if not m.name.endswith(".json")]
    return blobs


def test_no_source_metadata_reaches_the_corpus(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "src"
    root.mkdir()
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    buf = io.BytesIO()
    Image.fromarray(gray(rng)).save(buf, "JPEG", exif=exif, comment=b"gps 12.3 45.6")
    (root / "gray.jpg").write_bytes(buf.getvalue() + b"PK\x03\x04hidden.zip")
    Image.fromarray(np.stack([gray(rng)] * 3, -1)).save(root / "rgb.jpg", comment=b"gps 1 2")
    for fmt in ("jpeg", "png"):
        out = tmp_path / fmt
        build(folder_cfg(root, process={"format": fmt}), out, workers=1)
        for blob in _shard_images(out):
            assert b"SecretCam" not in blob and b"gps" not in blob and b"hidden" not in blob
            assert b"iCCP" not in blob
    stored = _shard_images(tmp_path / "jpeg")
    original = np.asarray(Image.open(root / "gray.jpg"))
    assert any(np.array_equal(np.asarray(Image.open(io.BytesIO(b))), original) for b in stored)


def test_empty_source_warns_and_empty_corpus_fails(images, tmp_path):
    (tmp_path / "nothing").mkdir()
    data = {
        "sources": [
            {"name": "s", "kind": "folder", "root": str(images), "modality": "infrared"},
            {
                "name": "t",
                "kind": "paired",
                "root": str(tmp_path / "nothing"),
                "modality": "infrared",
            },
        ]
    }
    stats = build(load_config(None, data=data), tmp_path / "o", workers=1)
    assert stats["sources"]["t"]["seen"] == 0
    assert any("source t: no images found" in w for w in stats["warnings"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("not an image")
    with pytest.raises(InfmixError, match="no image was kept"):
        build(folder_cfg(bad), tmp_path / "o2", workers=1)
    assert (tmp_path / "o2" / "rejected.jsonl").read_text().count("not_an_image") == 1


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"crop": None}, "sources.s.crop"),
        ({"crop": 1.5}, "sources.s.crop"),
        ({"root": ""}, "sources.s.root"),
    ],
)
def test_bad_source_values_name_the_key(tmp_path, patch, key):
    src = {"name": "s", "kind": "folder", "root": str(tmp_path), "modality": "rgb", **patch}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, data={"sources": [src]})


def test_override_edge_cases(tmp_path):
    (tmp_path / "set #1").mkdir()
    data = {
        "sources": [{"name": "s", "kind": "paired", "root": str(tmp_path), "modality": "rgb"}],
        "process": None,
    }
    cfg = load_config(None, [f"sources.s.root={tmp_path}/set #1", "process.max_side=64"], data=data)
    assert cfg.sources[0].root.name == "set #1" and cfg.process.max_side == 64
    cfg = load_config(
        None, ["sources.s.thermal_suffix=@x[", "sources.s.visible_suffix=_V"], data=data
    )
    assert cfg.sources[0].thermal_suffix == "@x["  # not valid YAML: taken literally
    data["sources"][0].update(thermal_suffix="", visible_suffix="")
    with pytest.raises(ConfigError, match=r"sources\.s\.thermal_suffix"):
        load_config(None, data=data)


def test_cli_edge_cases(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"name: \xff\xfe\n")
    r = runner.invoke(app, ["build", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "cannot read" in r.output
    cfg.write_text(
        yaml.safe_dump(
            {"sources": [{"name": "s", "kind": "folder", "root": str(tmp_path), "modality": "rgb"}]}
        )
    )
    (tmp_path / "afile").write_text("x")
    r = runner.invoke(app, ["build", str(cfg), "--out", str(tmp_path / "afile")])
    assert r.exit_code == 1 and "is a file" in r.output
    r = runner.invoke(app, ["demo-sources", str(tmp_path / "afile")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    long = tmp_path / ("x" * 120) / "c.yaml"  # an error stays one line, however long
    r = runner.invoke(app, ["build", str(long), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and str(long) in r.output
