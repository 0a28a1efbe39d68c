"""`infmix inspect` on a real demo build, against references read independently: the manifest
with pyarrow, the shards with tarfile, rejected.jsonl line by line, pixels with numpy."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from infmix import inspect as insp
from infmix.build import build
from infmix.cli import app
from infmix.config import load_config
from infmix.errors import InfmixError
from tests.conftest import demo_config_dict

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["inspect", *args], env={"COLUMNS": "300"})  # no line wraps


@pytest.fixture(scope="module")
def built(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "out"
    build(load_config(None, data=demo_config_dict(demo_root, near=True)), out, workers=1)
    return out


def read_tars(out: Path) -> dict[str, tuple[str, bytes]]:
    """{key: (source from its json, image bytes)}, from the tar files alone."""
    found = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name.removesuffix(".json")
                image = [v for n, v in members.items() if n.startswith(f"{key}.") and n != name]
                assert len(image) == 1
                found[key] = (json.loads(data)["source"], image[0])
    return found


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")).ravel()


def reference_histogram(images: list[bytes]) -> np.ndarray:
    counts = np.histogram(np.concatenate([pixels(d) for d in images]), bins=16, range=(0, 256))[0]
    return counts / counts.sum()


def seeded_first(keys: list[str], seed: int, n: int) -> list[str]:
    """The documented sample: the n keys with the smallest sha256 of f"{seed}:{key}"."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest())[:n]


def test_counts_match_manifest_tars_and_rejected(built):
    s = insp.inspect(built)
    manifest = pq.read_table(built / "manifest.parquet").to_pylist()
    tars = read_tars(built)
    kept = {name: v["kept"] for name, v in s["sources"].items()}
    assert kept == dict(Counter(r["source"] for r in manifest))
    assert kept == dict(Counter(source for source, _ in tars.values()))
    dropped: dict[str, Counter] = {name: Counter() for name in kept}
    for line in (built / "rejected.jsonl").read_text().splitlines():
        row = json.loads(line)
        dropped[row["source"]]["dup" if row["reason"].endswith("duplicate") else "bad"] += 1
    for name, v in s["sources"].items():
        assert (v["duplicates"], v["rejected"]) == (dropped[name]["dup"], dropped[name]["bad"])
        assert v["seen"] == v["kept"] + v["duplicates"] + v["rejected"]
        assert v["bytes"] == sum(len(d) for src, d in tars.values() if src == name)
    assert s["sources"]["ir_video"]["duplicates"] == 9  # the demo's slowly moving frames
    assert s["sources"]["ir_still"]["rejected"] == 3  # empty, corrupt, not an image
    assert s["samples"] == len(manifest) == len(tars) == 51
    assert s["shards"] == len(list((built / "shards").glob("*.tar"))) == 2
    assert s["bytes"] == sum(len(d) for _, d in tars.values())
    assert s["shard_bytes"] == sum(p.stat().st_size for p in (built / "shards").glob("*.tar"))
    assert json.loads(json.dumps(s)) == s  # plain JSON types throughout


def test_size_distribution(built):
    size = insp.inspect(built)["size"]
    manifest = pq.read_table(built / "manifest.parquet").to_pylist()
    for side in ("width", "height"):
        values = sorted(r[side] for r in manifest)
        nearest = {f"p{q}": values[round(q / 100 * (len(values) - 1))] for q in (10, 50, 90)}
        assert size[side] == {"min": values[0], **nearest, "max": values[-1]}
    for b in size["longer_side"]:
        hi = b["to"] or 10**9
        n = sum(b["from"] <= max(r["width"], r["height"]) < hi for r in manifest)
        assert b["count"] == n
    assert sum(b["count"] for b in size["longer_side"]) == len(manifest)


def test_intensity_of_all_images(built):
    t = insp.inspect(built, sample=10**6)["intensity"]
    images = [d for _, d in read_tars(built).values()]
    assert t["sampled"] == len(images) == 51
    np.testing.assert_allclose(t["fraction"], reference_histogram(images), rtol=0, atol=1e-12)
    assert t["pixels"] == sum(pixels(d).size for d in images)


def test_intensity_of_a_seeded_sample(built):
    t = insp.inspect(built, sample=7, seed=3)["intensity"]
    tars = read_tars(built)
    chosen = seeded_first(list(tars), 3, 7)
    assert t["sampled"] == 7
    expected = reference_histogram([tars[k][1] for k in chosen])
    np.testing.assert_allclose(t["fraction"], expected, rtol=0, atol=1e-12)
    everything = reference_histogram([d for _, d in tars.values()])
    assert not np.allclose(t["fraction"], everything)  # a sample, not the whole corpus


def test_contact_sheet_rows_show_each_sources_seeded_images(built):
    per_source = 8
    s = insp.inspect(built, per_source=per_source, seed=5)
    sheet = Image.open(built / "samples.png")
    assert sheet.format == "PNG" and sheet.mode == "L"
    assert sheet.width == insp.LABEL_W + per_source * insp.CELL
    assert sheet.height == insp.TOP + len(s["sources"]) * insp.ROW_H
    tars = read_tars(built)
    sheet_px = np.asarray(sheet)
    for row, name in enumerate(s["sources"]):  # sorted by name, as listed
        top = insp.TOP + row * insp.ROW_H
        assert (sheet_px[top : top + 40, : insp.LABEL_W] < 128).sum() > 50  # its name, in text
        keys = seeded_first([k for k, (src, _) in tars.items() if src == name], 5, per_source)
        for col in range(per_source):
            left = insp.LABEL_W + col * insp.CELL
            cell = sheet_px[top : top + insp.THUMB, left : left + insp.THUMB]
            if col >= len(keys):  # ir_video keeps 3, thermal16 6: the rest of the row is blank
                assert (cell == 255).all()
                continue
            thumb = Image.open(io.BytesIO(tars[keys[col]][1])).convert("L")
            thumb.thumbnail((insp.THUMB, insp.THUMB))
            x = left + (insp.THUMB - thumb.width) // 2
            placed = sheet_px[top : top + thumb.height, x : x + thumb.width]
            np.testing.assert_array_equal(placed, np.asarray(thumb))
            assert np.asarray(thumb).std() > 3  # a real picture, not a flat patch
    assert s["sources"]["ir_video"]["kept"] == 3 and s["sources"]["thermal16"]["kept"] == 6


def test_same_seed_same_sheet(built):
    first = insp.inspect(built, per_source=3, sample=10, seed=1)
    sheet = (built / "samples.png").read_bytes()
    assert insp.inspect(built, per_source=3, sample=10, seed=1) == first
    assert (built / "samples.png").read_bytes() == sheet
    insp.inspect(built, per_source=3, sample=10, seed=2)
    assert (built / "samples.png").read_bytes() != sheet
    assert not list(built.glob(".*.tmp"))  # written through a temporary name


def test_cli_prints_the_tables(built):
    r = invoke(str(built), "--per-source", "2", "--sample", "5", "--seed", "1")
    assert r.exit_code == 0, r.output
    for name in ("coco", "imagenet", "ir_still", "ir_video", "rgbt_pairs", "thermal16"):
        assert name in r.stdout
    assert "5 of 51 images" in r.stdout and "█" in r.stdout and "p50" in r.stdout
    assert Image.open(built / "samples.png").width == insp.LABEL_W + 2 * insp.CELL


def test_not_a_finished_build_is_a_clear_error(tmp_path):
    r = invoke(str(tmp_path))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "not a finished infmix build" in r.output
    assert "manifest.parquet" in r.output and "_info.json" in r.output
    (tmp_path / "manifest.parquet").write_bytes(b"")
    with pytest.raises(InfmixError, match=r"no _info\.json, stats\.json") as e:
        insp.inspect(tmp_path)
    assert "manifest.parquet" not in str(e.value)
    r = invoke(str(tmp_path / "nowhere"))
    assert r.exit_code == 1 and "is not a folder" in r.output
    assert not (tmp_path / "samples.png").exists()


def _copy(built: Path, dest: Path) -> Path:
    return shutil.copytree(built, dest, ignore=shutil.ignore_patterns("work", "samples.png"))


def _png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height`: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_an_oversized_image_in_a_shard_is_refused_undecoded(built, tmp_path):
    out = _copy(built, tmp_path / "out")
    shard = sorted((out / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    victim = members[0][0].name  # an image: each sample's image comes before its json
    # 12000^2 is under Pillow's own bomb error but over the build's max_pixels (1e8)
    bomb = _png_header(12_000, 12_000)
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = bomb if m.name == victim else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    with pytest.raises(InfmixError, match=rf"{victim}: too_large.*max_pixels=100000000"):
        insp.inspect(out, sample=10**6)


def test_a_missing_shard_is_named(built, tmp_path):
    out = _copy(built, tmp_path / "out")
    sorted((out / "shards").glob("*.tar"))[-1].unlink()
    with pytest.raises(InfmixError, match=r"missing: .*infmix-000001\.tar"):
        insp.inspect(out)


def test_a_build_that_kept_nothing(built, tmp_path):
    """What a build whose every input was dropped leaves: a key-only manifest, no shards."""
    out = _copy(built, tmp_path / "out")
    shutil.rmtree(out / "shards")
    pq.write_table(pa.table({"key": pa.array([], pa.string())}), out / "manifest.parquet")
    info = json.loads((out / "_info.json").read_text())
    info["splits"]["train"].update(filenames=[], shard_lengths=[], num_samples=0)
    (out / "_info.json").write_text(json.dumps(info))
    s = insp.inspect(out)
    assert (s["samples"], s["shards"], s["intensity"]["sampled"]) == (0, 0, 0)
    assert {v["kept"] for v in s["sources"].values()} == {0}
    assert Image.open(out / "samples.png").height == insp.TOP + len(s["sources"]) * insp.ROW_H
    r = invoke(str(out))
    assert r.exit_code == 0 and "0 of 0 images" in r.stdout


def test_stored_images_larger_than_their_inputs_are_inspected(demo_root, tmp_path):
    """PNG re-encodes of JPEG inputs can exceed the build's input cap (max_file_bytes)."""
    data = demo_config_dict(demo_root, format="png", max_file_bytes=9000)
    out = tmp_path / "png"
    build(load_config(None, data=data), out, workers=1)
    sizes = [len(b) for _, b in read_tars(out).values()]
    assert max(sizes) > 9000  # the case in point
    summary = insp.inspect(out, per_source=2, sample=10)
    assert summary["samples"] == len(sizes)
