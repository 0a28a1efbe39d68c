"""End to end: demo sources -> shards, read back with webdataset, HF datasets and timm's format."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from infmix.build import build
from infmix.config import load_config
from tests.conftest import demo_config_dict


@pytest.fixture(scope="module")
def corpus(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build(load_config(None, data=demo_config_dict(demo_root)), out, workers=1)
    return out


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def shard_samples(out: Path) -> dict[str, dict]:
    """key -> {"image": bytes, "json": dict}, read with the standard library."""
    samples: dict[str, dict] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                samples.setdefault(key, {})[ext] = json.loads(data) if ext == "json" else data
    return samples


def test_expected_samples_and_rejections(corpus, demo_root):
    stats = json.loads((corpus / "stats.json").read_text())
    s = stats["sources"]
    # ir_still: 12 jpg + 1 png + 1 exact copy + 3 broken files
    assert s["ir_still"]["seen"] == 17 and s["ir_still"]["kept"] == 13
    assert s["ir_still"]["dropped"] == {
        "corrupt": 1,
        "empty_file": 1,
        "exact_duplicate": 1,
        "not_an_image": 1,
    }
    assert s["ir_video"]["seen"] == 12  # 3 sequences x 12 frames, every 3rd
    assert s["imagenet"]["seen"] == 12  # 3 classes x per_class 4
    assert s["rgbt_pairs"]["seen"] == 9  # thermal side only
    assert s["thermal16"]["kept"] == 6 and s["coco"]["kept"] == 8
    for src in s.values():
        assert src["seen"] == src["kept"] + sum(src["dropped"].values())
    rejected = [json.loads(x) for x in (corpus / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 4
    assert all({"path", "source", "reason"} <= r.keys() for r in rejected)
    assert {Path(r["path"]).name for r in rejected if r["reason"] != "exact_duplicate"} == {
        "empty.jpg",
        "truncated.jpg",
        "notes.png",
    }


def test_shard_contents_and_metadata(corpus):
    samples = shard_samples(corpus)
    assert len(samples) == 60
    for key, sample in samples.items():
        assert "." not in key and not key.startswith("_")
        assert set(sample) == {"jpg", "json"}
        meta = sample["json"]
        im = Image.open(io.BytesIO(sample["jpg"]))
        assert im.mode == "L" and im.size == (meta["width"], meta["height"])
        assert meta["key"] == key
        assert {"source", "modality", "path", "original", "conversion", "sha256"} <= meta.keys()
        assert {"width", "height", "mode", "bit_depth"} <= meta["original"].keys()
    t16 = [s["json"] for s in samples.values() if s["json"]["source"] == "thermal16"]
    assert all(
        m["original"]["bit_depth"] == 16 and m["conversion"]["method"] == "stretch" for m in t16
    )
    assert all(m["conversion"]["high"] > m["conversion"]["low"] > 5000 for m in t16)
    pairs = [s["json"] for s in samples.values() if s["json"]["source"] == "rgbt_pairs"]
    assert all(m["pair_path"].startswith("visible/") for m in pairs)


def test_tar_members_fixed_metadata_and_order(corpus):
    for shard in (corpus / "shards").glob("*.tar"):
        members = tar_members(shard)
        assert all(
            m.mtime == 0
            and m.uid == 0
            and m.gid == 0
            and m.mode == 0o644
            and m.uname == ""
            and m.gname == ""
            for m in members
        )
        names = [m.name for m in members]
        assert [n.split(".")[1] for n in names] == ["jpg", "json"] * (len(names) // 2)


def test_shuffle_mixes_sources_and_respects_limits(corpus):
    info = json.loads((corpus / "_info.json").read_text())
    lengths = info["splits"]["train"]["shard_lengths"]
    assert lengths == [32, 28]  # samples_per_shard 32
    first = tar_members(corpus / "shards" / "infmix-000000.tar")
    sources = {m.name.split("__")[0] for m in first}
    assert len(sources) >= 4


def test_info_json_as_timm_reads_it(corpus):
    info = json.loads((corpus / "_info.json").read_text())
    split = info["splits"]["train"]
    assert split["name"] == "train" and info["name"] == "infmix-demo"
    # timm's reader_wds joins filenames to the folder of _info.json and trusts shard_lengths
    for name, n in zip(split["filenames"], split["shard_lengths"], strict=True):
        assert len(tar_members(corpus / name)) == 2 * n
    assert split["num_samples"] == sum(split["shard_lengths"]) == 60


def test_manifest_rows(corpus):
    table = pq.read_table(corpus / "manifest.parquet").to_pylist()
    samples = shard_samples(corpus)
    assert len(table) == 60 and {r["key"] for r in table} == set(samples)
    for row in table:
        meta = samples[row["key"]]["json"]
        assert row["sha256"] == meta["sha256"] and row["source"] == meta["source"]
        assert row["shard"].startswith("infmix-") and row["bytes"] == len(
            samples[row["key"]]["jpg"]
        )


def test_config_saved_next_to_output(corpus):
    saved = load_config(corpus / "config.yaml")
    assert saved.name == "infmix-demo" and len(saved.sources) == 6


def test_read_back_with_webdataset(corpus):
    wds = pytest.importorskip("webdataset")
    urls = [str(p) for p in sorted((corpus / "shards").glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pill")  # PIL, mode L
    rows = list(ds)
    assert len(rows) == 60
    for row in rows:
        assert row["jpg"].mode == "L"
        assert row["json"]["key"] == row["__key__"]


def test_read_back_with_hf_datasets(corpus):
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in (corpus / "shards").glob("*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train")
    assert len(ds) == 60
    row = ds[0]
    assert row["jpg"].mode == "L" and row["json"]["key"] == row["__key__"]
    # one schema for every row: the stretch values of 16-bit frames survive schema inference
    t16 = [r["json"] for r in ds if r["json"]["source"] == "thermal16"]
    assert len(t16) == 6 and all(m["conversion"]["low"] > 5000 for m in t16)
    pairs = [r["json"]["pair_path"] for r in ds if r["json"]["source"] == "rgbt_pairs"]
    assert all(p.startswith("visible/") for p in pairs)


def test_same_bytes_whatever_the_workers(demo_root, corpus, tmp_path):
    data = demo_config_dict(demo_root)
    build(load_config(None, data=data), tmp_path / "w2", workers=2)
    a = sorted((corpus / "shards").glob("*.tar"))
    b = sorted((tmp_path / "w2" / "shards").glob("*.tar"))
    assert [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))


def test_rerun_is_a_no_op_and_other_config_is_refused(demo_root, tmp_path):
    from infmix.errors import InfmixError

    data = demo_config_dict(demo_root)
    out = tmp_path / "c"
    build(load_config(None, data=data), out, workers=1)
    before = {p: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    stats = build(load_config(None, data=data), out, workers=1)
    assert stats["units_processed_this_run"] == 0
    assert {p: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before
    data["process"]["max_side"] = 64
    with pytest.raises(InfmixError, match="different config"):
        build(load_config(None, data=data), out, workers=1)
    stats = build(load_config(None, data=data), out, workers=1, overwrite=True)
    assert stats["total"]["kept"] == 60


def test_png_output(demo_root, tmp_path):
    data = demo_config_dict(demo_root, format="png", max_side=64)
    build(load_config(None, data=data), tmp_path / "p", workers=1)
    samples = shard_samples(tmp_path / "p")
    assert all(set(s) == {"png", "json"} for s in samples.values())
    sizes = [Image.open(io.BytesIO(s["png"])).size for s in samples.values()]
    assert max(max(s) for s in sizes) == 64


def test_byte_limit_per_shard(demo_root, tmp_path):
    data = demo_config_dict(demo_root)
    data["shards"] = {"samples_per_shard": 1000, "max_shard_bytes": 65536}
    build(load_config(None, data=data), tmp_path / "b", workers=1)
    tars = sorted((tmp_path / "b" / "shards").glob("*.tar"))
    assert len(tars) >= 3
    assert all(p.stat().st_size <= 65536 for p in tars)
    assert len(shard_samples(tmp_path / "b")) == 60
    # a shard closes only when the next sample would not fit: consecutive shards could not merge
    sizes = [p.stat().st_size for p in tars]
    assert all(a + b > 65536 - 10240 for a, b in itertools.pairwise(sizes))
