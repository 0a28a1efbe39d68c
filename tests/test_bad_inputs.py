"""Bad input is expected input: a build over broken files finishes and accounts for each one.

Two sources share good images and every kind of bad file; the build runs with one worker and
with two, and the shards, rejected.jsonl and stats.json are checked against what was planted.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from infmix.build import build
from infmix.config import load_config

MAX_FILE_BYTES = 40_000
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _claim_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR width/height of a PNG (and its CRC) without adding pixel data."""
    assert png[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:16] + ihdr + crc + png[33:]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_sources(root: Path) -> tuple[dict, dict]:
    """Write the two sources; returns ({(source, relpath)} of good files, {.. : reason})."""
    rng = np.random.default_rng(7)
    good: dict[tuple[str, str], tuple[int, int]] = {}
    bad: dict[tuple[str, str], str] = {}

    def noise(h: int, w: int, c: int | None = None, hi: int = 256) -> np.ndarray:
        shape = (h, w) if c is None else (h, w, c)
        return rng.integers(0, hi, shape, dtype=np.uint16 if hi > 256 else np.uint8)

    still = root / "still"
    for i in range(4):
        _write(still / f"ir/{i:03d}.jpg", _jpeg(noise(24, 32)))
        good["still", f"ir/{i:03d}.jpg"] = (32, 24)
    _write(still / "rgb/scene.png", _png(noise(20, 30, 3)))
    good["still", "rgb/scene.png"] = (30, 20)
    _write(still / "raw/frame16.png", _png(noise(18, 26, hi=16384)))
    good["still", "raw/frame16.png"] = (26, 18)

    jpeg = (still / "ir/000.jpg").read_bytes()
    png = (still / "rgb/scene.png").read_bytes()
    planted = {
        "bad/empty.jpg": (b"", "empty_file"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "bad/truncated.png": (png[: len(png) * 2 // 3], "corrupt"),
        "bad/text.jpg": (b"this is not an image\n" * 20, "not_an_image"),
        "bad/huge_header.png": (_claim_size(png, 100_000, 100_000), "too_large"),
        "bad/big_file.png": (_png(noise(240, 240)), "too_large"),
    }
    for rel, (data, reason) in planted.items():
        _write(still / rel, data)
        bad["still", rel] = reason
    assert (still / "bad/big_file.png").stat().st_size > MAX_FILE_BYTES

    # Unreadable: a dangling link works for every user; a chmod 000 file only when not root.
    os.symlink(still / "nowhere.jpg", still / "bad/dangling.jpg")
    bad["still", "bad/dangling.jpg"] = "unreadable"
    if not IS_ROOT:
        locked = _write(still / "bad/locked.png", png)
        locked.chmod(0)
        bad["still", "bad/locked.png"] = "unreadable"

    video = root / "video"
    for i in range(1, 6):
        _write(video / f"seq/{i}.png", _png(noise(16, 20)))
        good["video", f"seq/{i}.png"] = (20, 16)
    _write(video / "seq/6.png", b"\x89PNG\r\n\x1a\n garbage after the signature")
    bad["video", "seq/6.png"] = "not_an_image"
    _write(video / "seq/7.png", b"")
    bad["video", "seq/7.png"] = "empty_file"
    return good, bad


def _config(root: Path):
    return load_config(
        None,
        data={
            "data_root": str(root),
            "sources": [
                {"name": "still", "kind": "folder", "root": "still", "modality": "infrared"},
                {"name": "video", "kind": "video", "root": "video", "modality": "infrared"},
            ],
            "process": {"chunk_size": 3, "max_file_bytes": MAX_FILE_BYTES},
            "shards": {"samples_per_shard": 4},
        },
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("bad_inputs")
    good, bad = make_sources(root)
    yield root, good, bad
    for p in root.rglob("*"):  # let pytest clean up the chmod 000 file
        if not p.is_symlink():
            p.chmod(0o755)


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def built(request, sources, tmp_path_factory) -> tuple[Path, dict, dict, dict]:
    root, good, bad = sources
    out = tmp_path_factory.mktemp(f"out_w{request.param}")
    stats = build(_config(root), out, workers=request.param)
    return out, good, bad, stats


def _shard_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def _rejected(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def test_every_good_image_is_in_the_shards(built):
    out, good, _, _ = built
    samples = _shard_samples(out)
    found = {}
    for key, files in samples.items():
        assert set(files) == {"jpg", "json"}, key
        meta = json.loads(files["json"])
        assert meta["key"] == key
        im = Image.open(io.BytesIO(files["jpg"]))
        assert im.mode == "L"
        found[meta["source"], meta["path"]] = im.size
    assert found == good


def test_every_bad_file_is_rejected_once_with_its_reason(built, sources):
    out, good, bad, _ = built
    root = sources[0].resolve()
    rows = _rejected(out)
    for row in rows:
        assert {"path", "source", "reason"} <= set(row)
    by_file = Counter(
        (r["source"], Path(r["path"]).relative_to(root / r["source"]).as_posix()) for r in rows
    )
    assert set(by_file) == set(bad)
    assert all(n == 1 for n in by_file.values()), by_file
    reasons = {
        (r["source"], Path(r["path"]).relative_to(root / r["source"]).as_posix()): r["reason"]
        for r in rows
    }
    assert reasons == bad
    assert not set(reasons) & set(good)


def test_stats_account_for_every_file(built):
    out, good, bad, stats = built
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["sources"] == stats["sources"]
    for name in ("still", "video"):
        s = on_disk["sources"][name]
        n_good = sum(src == name for src, _ in good)
        expected_dropped = Counter(r for (src, _), r in bad.items() if src == name)
        assert s["kept"] == n_good
        assert s["dropped"] == dict(expected_dropped)
        assert (
            s["seen"]
            == s["kept"] + sum(s["dropped"].values())
            == n_good + sum(expected_dropped.values())
        )
    total = on_disk["total"]
    assert total["seen"] == len(good) + len(bad)
    assert total["kept"] == len(good)
    assert total["dropped"] == dict(Counter(bad.values()))


def test_manifest_lists_the_kept_samples(built):
    out, good, _, _ = built
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    assert {(r["source"], r["path"]) for r in table} == set(good)
    assert len(table) == len(good)


def test_output_does_not_depend_on_worker_count(sources, tmp_path):
    root, _, _ = sources
    outs = [tmp_path / "w1", tmp_path / "w2"]
    for out, workers in zip(outs, (1, 2), strict=True):
        build(_config(root), out, workers=workers)
    names = sorted(p.name for p in (outs[0] / "shards").glob("*.tar"))
    assert names and names == sorted(p.name for p in (outs[1] / "shards").glob("*.tar"))
    for name in names:
        assert (outs[0] / "shards" / name).read_bytes() == (outs[1] / "shards" / name).read_bytes()
    assert (outs[0] / "rejected.jsonl").read_bytes() == (outs[1] / "rejected.jsonl").read_bytes()
