"""Planning: which files each source kind takes, in what order, and under which keys.

Planning never reads file contents, so the trees here are empty files with the right names,
created in a scrambled order so that sorting is actually exercised.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infmix.config import load_config
from infmix.errors import ConfigError
from infmix.sample import Sample
from infmix.sources import plan


def touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def config(root: Path, *sources: dict):
    """A config over `root` with the given sources (modality defaults to infrared)."""
    srcs = [{"modality": "infrared", **s} for s in sources]
    return load_config(None, data={"data_root": str(root), "sources": srcs})


def relpaths(samples: list[Sample], source: str | None = None) -> list[str]:
    return [s.relpath for s in samples if source is None or s.source == source]


# ---------------------------------------------------------------- folder


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    root = tmp_path / "still"
    touch(
        root,
        "f.tif",
        "e.jpeg",
        "d.bmp",
        "c.Tiff",
        "B.PNG",
        "a.jpg",
        "notes.txt",
        "anim.gif",
        "jpg",
        "README",
        ".hidden.jpg",
        ".cache/x.jpg",
        "sub/deeper/h.jpg",
        "sub/g.png",
        "broken/x.jpg",
        "broken/y.png",
        "masks/m_mask.png",
        "masks/m.png",
    )
    return root


def test_folder_takes_images_recursively_with_default_extensions(folder_tree):
    cfg = config(folder_tree.parent, {"name": "still", "kind": "folder", "root": "still"})
    got = relpaths(plan(cfg))
    expected = {
        "a.jpg",
        "B.PNG",
        "c.Tiff",
        "d.bmp",
        "e.jpeg",
        "f.tif",
        "sub/g.png",
        "sub/deeper/h.jpg",
        "broken/x.jpg",
        "broken/y.png",
        "masks/m_mask.png",
        "masks/m.png",
    }
    assert sorted(got) == sorted(expected)  # and each exactly once
    assert not any(part.startswith(".") for r in got for part in r.split("/"))


def test_folder_sample_fields(folder_tree):
    cfg = config(
        folder_tree.parent, {"name": "still", "kind": "folder", "root": "still", "modality": "rgb"}
    )
    samples = plan(cfg)
    for s in samples:
        assert s.source == "still" and s.modality == "rgb" and s.pair is None
        assert Path(s.path).is_absolute()
        assert Path(s.path) == (folder_tree / s.relpath).resolve()


def test_folder_exclude_globs(folder_tree):
    cfg = config(
        folder_tree.parent,
        {
            "name": "still",
            "kind": "folder",
            "root": "still",
            "exclude": ["broken/*", "*_mask.png"],
        },
    )
    got = set(relpaths(plan(cfg)))
    assert not {"broken/x.jpg", "broken/y.png", "masks/m_mask.png"} & got
    assert {"masks/m.png", "sub/deeper/h.jpg", "a.jpg"} <= got


def test_folder_extension_filter_is_case_insensitive(folder_tree):
    cfg = config(
        folder_tree.parent,
        {
            "name": "still",
            "kind": "folder",
            "root": "still",
            "extensions": ["PNG", ".tiff"],
        },
    )
    got = set(relpaths(plan(cfg)))
    assert got == {
        "B.PNG",
        "c.Tiff",
        "sub/g.png",
        "broken/y.png",
        "masks/m_mask.png",
        "masks/m.png",
    }


def test_folder_frame_stride_is_per_folder(tmp_path):
    root = tmp_path / "strided"
    touch(root, *[f"one/{i:03d}.jpg" for i in range(5)], *[f"two/{i}.png" for i in range(3)])
    cfg = config(tmp_path, {"name": "s", "kind": "folder", "root": "strided", "frame_stride": 2})
    assert relpaths(plan(cfg)) == [
        "one/000.jpg",
        "one/002.jpg",
        "one/004.jpg",
        "two/0.png",
        "two/2.png",
    ]


# ---------------------------------------------------------------- video


def test_video_stride_in_natural_frame_order(tmp_path):
    root = tmp_path / "vid"
    frames_a = [f"seq_a/{i}.jpg" for i in range(1, 13)]
    frames_b = [f"seq_b/frame_{i}.jpg" for i in range(1, 6)]
    touch(root, *reversed(frames_a), *reversed(frames_b), "seq_a/labels.txt")
    cfg = config(tmp_path, {"name": "v", "kind": "video", "root": "vid", "frame_stride": 3})
    assert relpaths(plan(cfg)) == [
        "seq_a/1.jpg",
        "seq_a/4.jpg",
        "seq_a/7.jpg",
        "seq_a/10.jpg",
        "seq_b/frame_1.jpg",
        "seq_b/frame_4.jpg",
    ]


def test_video_natural_order_puts_2_before_10(tmp_path):
    root = tmp_path / "vid"
    touch(root, "s/10.jpg", "s/2.jpg", "s/1.jpg", "s/frame_10.png", "s/frame_9.png")
    cfg = config(tmp_path, {"name": "v", "kind": "video", "root": "vid"})
    assert relpaths(plan(cfg)) == [
        "s/1.jpg",
        "s/2.jpg",
        "s/10.jpg",
        "s/frame_9.png",
        "s/frame_10.png",
    ]


def test_video_frames_subdir(tmp_path):
    root = tmp_path / "lasher"
    for seq in ("seq2", "seq1"):
        touch(root, *[f"{seq}/infrared/{i}.jpg" for i in range(7, 0, -1)])
        touch(root, *[f"{seq}/visible/{i}.jpg" for i in range(1, 8)])
    touch(root, "seq1/cover.jpg", "seq3/other/1.jpg")
    cfg = config(
        tmp_path,
        {
            "name": "lasher",
            "kind": "video",
            "root": "lasher",
            "frames_subdir": "infrared",
            "frame_stride": 2,
        },
    )
    assert relpaths(plan(cfg)) == [
        *[f"seq1/infrared/{i}.jpg" for i in (1, 3, 5, 7)],
        *[f"seq2/infrared/{i}.jpg" for i in (1, 3, 5, 7)],
    ]


# ---------------------------------------------------------------- imagenet


def test_imagenet_first_per_class_in_sorted_name_order(tmp_path):
    root = tmp_path / "imagenet"
    for cls in ("n02000002", "n01000001"):
        # Created last-first, so creation order is the reverse of name order.
        touch(root, *[f"{cls}/{cls}_{i:05d}.JPEG" for i in range(6, 0, -1)])
        touch(root, f"{cls}/ANNOTATION.txt")
    touch(root, "n03000003/n03000003_00001.JPEG")
    cfg = config(
        tmp_path,
        {"name": "inet", "kind": "imagenet", "root": "imagenet", "modality": "rgb", "per_class": 3},
    )
    assert relpaths(plan(cfg)) == [
        *[f"n01000001/n01000001_{i:05d}.JPEG" for i in (1, 2, 3)],
        *[f"n02000002/n02000002_{i:05d}.JPEG" for i in (1, 2, 3)],
        "n03000003/n03000003_00001.JPEG",
    ]


# ---------------------------------------------------------------- paired


def test_paired_llvip_sibling_folders(tmp_path):
    root = tmp_path / "llvip"
    for split, ids in (("train", (10001, 10002, 10003)), ("test", (190001,))):
        for i in ids:
            touch(root, f"infrared/{split}/{i:06d}.jpg", f"visible/{split}/{i:06d}.jpg")
    touch(root, "infrared/test/190002.jpg")  # no visible partner
    cfg = config(tmp_path, {"name": "llvip", "kind": "paired", "root": "llvip"})
    samples = plan(cfg)
    assert relpaths(samples) == [
        "infrared/test/190001.jpg",
        "infrared/test/190002.jpg",
        "infrared/train/010001.jpg",
        "infrared/train/010002.jpg",
        "infrared/train/010003.jpg",
    ]
    pairs = {s.relpath: s.pair for s in samples}
    assert pairs["infrared/train/010002.jpg"] == "visible/train/010002.jpg"
    assert pairs["infrared/test/190001.jpg"] == "visible/test/190001.jpg"
    assert pairs["infrared/test/190002.jpg"] is None


def test_paired_kaist_layout_with_thermal_dir(tmp_path):
    root = tmp_path / "kaist"
    for s, v in (("set01", "V000"), ("set00", "V001"), ("set00", "V000")):
        for i in range(4):
            touch(root, f"{s}/{v}/lwir/I{i:05d}.jpg", f"{s}/{v}/visible/I{i:05d}.jpg")
    cfg = config(
        tmp_path,
        {
            "name": "kaist",
            "kind": "paired",
            "root": "kaist",
            "thermal_dir": "lwir",
            "frame_stride": 2,
        },
    )
    samples = plan(cfg)
    assert relpaths(samples) == [
        f"{s}/{v}/lwir/I{i:05d}.jpg"
        for s, v in (("set00", "V000"), ("set00", "V001"), ("set01", "V000"))
        for i in (0, 2)
    ]
    for s in samples:
        assert s.pair == s.relpath.replace("/lwir/", "/visible/")


def test_paired_suffix_mode(tmp_path):
    root = tmp_path / "rgbtcc"
    touch(
        root,
        "0001_T.jpg",
        "0001_RGB.jpg",
        "0002_T.jpg",
        "0002_RGB.png",
        "0003_T.jpg",
        "0004_RGB.jpg",
        "sub/0005_T.png",
        "sub/0005_RGB.jpg",
    )
    cfg = config(
        tmp_path,
        {
            "name": "cc",
            "kind": "paired",
            "root": "rgbtcc",
            "thermal_suffix": "_T",
            "visible_suffix": "_RGB",
        },
    )
    samples = plan(cfg)
    assert {s.relpath: s.pair for s in samples} == {
        "0001_T.jpg": "0001_RGB.jpg",
        "0002_T.jpg": "0002_RGB.png",
        "0003_T.jpg": None,
        "sub/0005_T.png": "sub/0005_RGB.jpg",
    }
    assert relpaths(samples) == ["0001_T.jpg", "0002_T.jpg", "0003_T.jpg", "sub/0005_T.png"]


def test_paired_suffixes_must_come_together(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="thermal_suffix"):
        config(tmp_path, {"name": "cc", "kind": "paired", "root": "x", "thermal_suffix": "_T"})


# ---------------------------------------------------------------- keys and order


@pytest.fixture
def mixed_tree(tmp_path: Path) -> Path:
    touch(
        tmp_path / "z",
        "a b.jpg",
        "a_b.jpg",
        "a.b.jpg",
        "x/y.jpg",
        "x__y.jpg",
        "_lead.jpg",
        "dir.with.dots/img.v2.png",
        "ünï.jpg",
        "üni.jpg",
    )
    touch(tmp_path / "a", *[f"seq/{i}.jpg" for i in range(3)])
    touch(tmp_path / "m", "cls/1.jpg", "cls/2.jpg")
    return tmp_path


def mixed_config(root: Path):
    return config(
        root,
        {"name": "zeta", "kind": "folder", "root": "z"},
        {"name": "alpha", "kind": "video", "root": "a"},
        {"name": "mid", "kind": "imagenet", "root": "m", "per_class": 5},
    )


def test_keys_are_webdataset_safe_and_unique(mixed_tree):
    samples = plan(mixed_config(mixed_tree))
    keys = [s.key for s in samples]
    assert len(samples) == 9 + 3 + 2
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert "." not in k and not k.startswith("_")
        assert k.isascii() and " " not in k and "/" not in k


def test_colliding_paths_get_distinct_keys(mixed_tree):
    by_path = {s.relpath: s.key for s in plan(mixed_config(mixed_tree))}
    for group in (
        ("a b.jpg", "a_b.jpg", "a.b.jpg"),
        ("x/y.jpg", "x__y.jpg"),
        ("ünï.jpg", "üni.jpg"),
    ):
        assert len({by_path[r] for r in group}) == len(group)


def test_plan_is_sorted_by_source_name_and_repeatable(mixed_tree):
    first = plan(mixed_config(mixed_tree))
    names = [s.source for s in first]
    assert names == sorted(names)
    assert names[0] == "alpha" and names[-1] == "zeta"
    assert relpaths(first, "alpha") == ["seq/0.jpg", "seq/1.jpg", "seq/2.jpg"]
    assert plan(mixed_config(mixed_tree)) == first


def test_keys_do_not_depend_on_the_data_root(tmp_path):
    for where in ("one", "two"):
        touch(tmp_path / where / "ds", "x/1.jpg", "a b.jpg", "a_b.jpg")
    a = plan(config(tmp_path / "one", {"name": "d", "kind": "folder", "root": "ds"}))
    b = plan(config(tmp_path / "two", {"name": "d", "kind": "folder", "root": "ds"}))
    assert [s.key for s in a] == [s.key for s in b]
    assert [s.path for s in a] != [s.path for s in b]


def _plan_with_scandir_reversed(cfg, monkeypatch) -> list[Sample]:
    real = os.scandir

    class Reversed:
        def __init__(self, path):
            with real(path) as it:
                self.entries = list(it)[::-1]

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    with monkeypatch.context() as m:
        m.setattr(os, "scandir", Reversed)
        return plan(cfg)


def test_plan_does_not_depend_on_file_system_order(mixed_tree, monkeypatch):
    cfg = mixed_config(mixed_tree)
    assert _plan_with_scandir_reversed(cfg, monkeypatch) == plan(cfg)


def test_plan_order_with_zero_padding_ties_does_not_depend_on_file_system(tmp_path, monkeypatch):
    touch(tmp_path / "v", "s/1.jpg", "s/01.jpg", "s/001.jpg", "s/2.jpg", "7/a.jpg", "07/a.jpg")
    cfg = config(tmp_path, {"name": "v", "kind": "video", "root": "v"})
    assert relpaths(_plan_with_scandir_reversed(cfg, monkeypatch)) == relpaths(plan(cfg))


def test_keys_are_unique_across_sources(tmp_path):
    touch(tmp_path / "r1", "b/c.jpg")
    touch(tmp_path / "r2", "c.jpg")
    # "__" joins source and path parts in keys, so it may not appear in a source name
    with pytest.raises(ConfigError, match=r"sources\.a__b\.name"):
        config(
            tmp_path,
            {"name": "a", "kind": "folder", "root": "r1"},
            {"name": "a__b", "kind": "folder", "root": "r2"},
        )
    cfg = config(
        tmp_path,
        {"name": "a", "kind": "folder", "root": "r1"},
        {"name": "a_b", "kind": "folder", "root": "r2"},
        {"name": "a-b", "kind": "folder", "root": "r1"},
    )
    keys = [s.key for s in plan(cfg)]
    assert len(keys) == 3 and len(set(keys)) == len(keys), keys
