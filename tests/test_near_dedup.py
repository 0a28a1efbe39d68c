"""Near-duplicate removal: planted duplicates go, distinct images stay, by the documented rules;
deterministic, resumable after a kill mid-stage, the same with exact and IVF search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from infmix.build import build
from infmix.config import load_config
from infmix.dedup.calibrate import DEFAULT_THRESHOLDS, scores, synthetic_sims
from infmix.dedup.search import SearchParams, pairs_above
from infmix.dedup.synthetic import (
    NEGATIVE_CHANGES,
    POSITIVE_CHANGES,
    changed,
    make_scene,
    render,
    to_u8,
)
from infmix.errors import InfmixError

H, W = 512, 640  # the size the default threshold was calibrated at


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """scene_k/original.png, one file per change; plus an RGB copy of scene 0's original."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(7)
    for k in range(3):
        scene = make_scene(rng, H, W)
        folder = root / "ir" / f"scene{k}"
        folder.mkdir(parents=True)
        Image.fromarray(to_u8(render(scene))).save(folder / "a_original.png")
        for change in (*POSITIVE_CHANGES, *NEGATIVE_CHANGES):
            Image.fromarray(changed(scene, change, rng)).save(folder / f"{change}.png")
    (root / "rgb").mkdir()
    Image.open(root / "ir" / "scene0" / "a_original.png").convert("RGB").save(
        root / "rgb" / "copy.png"
    )
    return root


def cfg_for(root: Path, **near):
    return load_config(
        None,
        data={
            "sources": [
                {"name": "ir", "kind": "folder", "root": str(root / "ir"), "modality": "infrared"},
                {"name": "rgb", "kind": "folder", "root": str(root / "rgb"), "modality": "rgb"},
            ],
            "process": {"chunk_size": 8},
            "dedup": {"near": near},
        },
    )


def kept_paths(out: Path) -> set[str]:
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return {f"{r['source']}/{r['path']}" for r in rows}


@pytest.fixture(scope="module")
def built(planted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("near")
    build(cfg_for(planted), out, workers=1)
    return out


def test_planted_duplicates_removed_distinct_kept(built):
    kept = kept_paths(built)
    for k in range(3):
        scene = f"ir/scene{k}"
        # one representative per scene: the double-size copy has the most pixels
        assert f"{scene}/double_size.png" in kept
        for change in POSITIVE_CHANGES:
            if change != "double_size":
                assert f"{scene}/{change}.png" not in kept, change
        assert f"{scene}/a_original.png" not in kept
        for change in NEGATIVE_CHANGES:
            assert f"{scene}/{change}.png" in kept, change
    assert "rgb/copy.png" in kept  # another modality is never compared


def test_duplicates_parquet_and_contact_sheet(built):
    rows = pq.read_table(built / "duplicates.parquet").to_pylist()
    assert {"key", "cluster", "representative", "similarity"} <= rows[0].keys()
    clusters: dict[int, list[dict]] = {}
    for r in rows:
        clusters.setdefault(r["cluster"], []).append(r)
    assert len(clusters) == 3
    for members in clusters.values():
        assert len(members) == len(POSITIVE_CHANGES) + 1
        (rep,) = [m for m in members if m["kept"]]
        assert rep["similarity"] == pytest.approx(1.0)
        assert all(m["representative"] == rep["key"] for m in members)
        assert all(m["similarity"] >= 0.95 for m in members)
    stats = json.loads((built / "stats.json").read_text())
    assert stats["sources"]["ir"]["dropped"] == {"near_duplicate": 3 * len(POSITIVE_CHANGES)}
    sheet = Image.open(built / "duplicates.png")
    assert sheet.size[0] > 400 and sheet.size[1] > 3 * 112


def test_same_modality_is_compared(planted, tmp_path):
    root = tmp_path / "one_modality"
    root.mkdir()
    (root / "ir").symlink_to(planted / "ir")
    (root / "rgb").symlink_to(planted / "rgb")
    cfg = load_config(
        None,
        data={
            "sources": [
                {"name": "ir", "kind": "folder", "root": str(root / "ir"), "modality": "infrared"},
                {
                    "name": "rgb",
                    "kind": "folder",
                    "root": str(root / "rgb"),
                    "modality": "infrared",
                },
            ],
            "process": {"format": "png"},
        },
    )
    build(cfg, tmp_path / "o", workers=1)
    assert "rgb/copy.png" not in kept_paths(tmp_path / "o")


def test_scope_source_keeps_cross_source_copies(planted, tmp_path):
    root = tmp_path / "two"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for name in ("a", "b"):
        for f in ("a_original.png", "noise.png"):
            (root / name / f).write_bytes((planted / "ir" / "scene1" / f).read_bytes())
    for scope, expected in (("source", 2), ("all", 1)):
        cfg = load_config(
            None,
            data={
                "sources": [
                    {"name": n, "kind": "folder", "root": str(root / n), "modality": "infrared"}
                    for n in ("a", "b")
                ],
                "dedup": {"exact": False, "near": {"scope": scope}},
            },
        )
        stats = build(cfg, tmp_path / scope, workers=1)
        assert stats["total"]["kept"] == expected, scope


def test_deterministic_across_workers_and_index_types(planted, built, tmp_path):
    build(cfg_for(planted), tmp_path / "w2", workers=2)
    build(cfg_for(planted, flat_max=0, nlist=4, nprobe=4), tmp_path / "ivf", workers=2)
    for other in ("w2", "ivf"):
        for name in ("duplicates.parquet", "manifest.parquet", "rejected.jsonl"):
            a = (built / name).read_bytes()
            assert a == (tmp_path / other / name).read_bytes(), (other, name)
        shards = sorted((built / "shards").glob("*.tar"))
        assert [p.read_bytes() for p in shards] == [
            p.read_bytes() for p in sorted((tmp_path / other / "shards").glob("*.tar"))
        ]


@pytest.mark.parametrize("dim", [64, 288])  # 288: the IVF path searches a 64-d PCA
def test_exact_and_ivf_search_agree(dim):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(3000, dim)).astype(np.float32)
    dupes = base[:300] + 0.1 / np.sqrt(dim) * rng.normal(size=(300, dim)).astype(np.float32)
    v = np.concatenate([base, dupes])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    flat, s1 = pairs_above(v, SearchParams(0.99))
    ivf, s2 = pairs_above(v, SearchParams(0.99, flat_max=0))
    assert len(flat) >= 280
    assert np.array_equal(flat, ivf) and np.array_equal(s1, s2)
    # reference: a plain float64 all-pairs computation over the same vectors
    sims = v.astype(np.float64) @ v.astype(np.float64).T
    i, j = np.nonzero(np.triu(sims >= 0.99, k=1))
    assert np.array_equal(flat, np.stack([i, j], axis=1))


@pytest.mark.slow
def test_default_threshold_is_calibrated():
    """Planted pairs from a seed the default was not tuned on."""
    sims, labels, changes = synthetic_sims(20, seed=11)
    (row,) = scores(
        sims,
        labels,
        [
            load_config(
                None,
                data={"sources": [{"name": "x", "kind": "folder", "root": "/", "modality": "rgb"}]},
            ).dedup.near.threshold
        ],
    )
    assert row["recall"] >= 0.95 and row["precision"] >= 0.99, row
    assert set(changes) == set(POSITIVE_CHANGES) | set(NEGATIVE_CHANGES)
    assert 0.988 in DEFAULT_THRESHOLDS


def _cfg_file(planted: Path, tmp_path: Path, scope: str) -> Path:
    path = tmp_path / f"{scope}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {
                        "name": f"s{k}",
                        "kind": "folder",
                        "root": str(planted / "ir" / f"scene{k}"),
                        "modality": "infrared",
                    }
                    for k in range(3)
                ],
                "process": {"format": "png"},
                "dedup": {"near": {"scope": scope}},
            }
        )
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("point", ["dedup.after_vectors", "dedup.after_group"])
def test_killed_in_the_dedup_stage_then_resumed(planted, tmp_path, point):
    cfg = _cfg_file(planted, tmp_path, "source")  # three groups: a kill between two of them
    cmd = [sys.executable, "-m", "infmix", "build", str(cfg), "--workers", "1", "--out"]
    ref = subprocess.run([*cmd, str(tmp_path / "ref")], capture_output=True)
    assert ref.returncode == 0, ref.stderr
    env = {**os.environ, "INFMIX_FAILPOINTS": point}
    killed = subprocess.run([*cmd, str(tmp_path / "o")], capture_output=True, env=env)
    assert killed.returncode == -9  # SIGKILL inside the stage
    assert not (tmp_path / "o" / "_info.json").exists()
    done = subprocess.run([*cmd, str(tmp_path / "o")], capture_output=True)
    assert done.returncode == 0, done.stderr
    for name in ("duplicates.parquet", "manifest.parquet", "rejected.jsonl", "_info.json"):
        assert (tmp_path / "o" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "test_efficientnet.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.mark.slow
def test_timm_embedder_with_a_local_checkpoint(planted, timm_checkpoint, tmp_path):
    cfg = cfg_for(
        planted,
        embedder="timm:test_efficientnet",
        checkpoint=str(timm_checkpoint),
        threshold=0.9,
        batch_size=8,
        device="cpu",
    )
    stats = build(cfg, tmp_path / "o", workers=1)
    assert stats["total"]["seen"] == 3 * 13 + 1
    emb = list((tmp_path / "o" / "work").glob("*/chunks/*.emb.npy"))
    import timm

    dim = timm.create_model("test_efficientnet", num_classes=0).num_features
    assert emb and all(np.load(p).shape[1] == dim for p in emb)
    rows = [np.load(p) for p in emb]
    norms = np.linalg.norm(np.concatenate(rows), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-3)


def test_timm_checkpoint_that_does_not_match_is_an_error(planted, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "bogus.weight": torch.zeros(2)}, path)
    cfg = cfg_for(planted, embedder="timm:test_efficientnet", checkpoint=str(path), device="cpu")
    with pytest.raises(InfmixError, match=r"does not match the model.*bogus\.weight"):
        build(cfg, tmp_path / "o", workers=1)


def test_calibrate_cli_on_user_pairs(planted, tmp_path):
    from typer.testing import CliRunner

    from infmix.cli import app

    scene = planted / "ir" / "scene2"
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "path_a,path_b,label\n"
        + "".join(
            f"{scene}/a_original.png,{scene}/{c}.png,{int(c in POSITIVE_CHANGES)}\n"
            for c in (*POSITIVE_CHANGES, *NEGATIVE_CHANGES)
        )
    )
    r = CliRunner().invoke(app, ["dedup-calibrate", str(csv), "--thresholds", "0.988,0.999"])
    assert r.exit_code == 0, r.output
    assert "0.9880" in r.output and "10 duplicate / 2 distinct" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,b.png,maybe\n")
    r = CliRunner().invoke(app, ["dedup-calibrate", str(bad)])
    assert r.exit_code == 1 and "expected path_a,path_b,label" in r.output


def test_gpu_knn_path_agrees_with_range_search(monkeypatch):
    """The GPU branch (k-NN candidates) run on the CPU: faiss' GPU copy swapped for identity."""
    import faiss

    import infmix.dedup.search as search

    rng = np.random.default_rng(5)
    base = rng.normal(size=(1500, 288)).astype(np.float32)
    dupes = base[:150] + 0.006 * rng.normal(size=(150, 288)).astype(np.float32)
    v = np.concatenate([base, dupes])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    expected, _ = pairs_above(v, SearchParams(0.99))
    monkeypatch.setattr(search, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: index, raising=False)
    got, _ = pairs_above(v, SearchParams(0.99, flat_max=0, gpu_k=8))
    assert len(expected) >= 140 and np.array_equal(got, expected)
