"""Config validation: errors name the key and come before any work; overrides apply."""

from __future__ import annotations

import pytest

from infmix.config import load_config
from infmix.errors import ConfigError
from tests.conftest import REPO, demo_config_dict


def _err(data: dict, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides, data=data)
    return str(e.value)


def test_demo_and_paper_recipes_validate(demo_root):
    cfg = load_config(None, data=demo_config_dict(demo_root))
    assert [s.name for s in cfg.sources][:2] == ["ir_still", "ir_video"]
    paper = load_config(REPO / "pipelines" / "infmix.yaml", check_roots=False)
    names = {s.name for s in paper.sources}
    assert {"llvip", "kaist", "imagenet", "coco"} <= names
    imagenet = next(s for s in paper.sources if s.name == "imagenet")
    assert imagenet.per_class == 200 and imagenet.modality == "rgb"
    assert not names & {"soda", "mfnet", "scut_seg"}  # evaluation sets never pre-train


def test_missing_root_names_the_source(demo_root):
    data = demo_config_dict(demo_root)
    data["sources"][2]["root"] = "nowhere"
    msg = _err(data)
    assert "sources.thermal16.root" in msg and "does not exist" in msg


def test_unknown_kind(demo_root):
    data = demo_config_dict(demo_root)
    data["sources"][0]["kind"] = "movie"
    msg = _err(data)
    assert "sources.ir_still" in msg and "unknown kind 'movie'" in msg


def test_unknown_key_and_wrong_kind_option(demo_root):
    data = demo_config_dict(demo_root)
    data["process"]["qualty"] = 3
    data["sources"][4]["frame_stride"] = 2  # imagenet has no frame_stride
    msg = _err(data)
    assert "process.qualty: unknown key" in msg
    assert "sources.imagenet.frame_stride: unknown key" in msg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("process.jpeg_quality=0", "process.jpeg_quality"),
        ("process.percentiles=[99,1]", "process.percentiles"),
        ("sources.ir_video.frame_stride=0", "sources.ir_video.frame_stride"),
        ("sources.ir_still.modality=ultraviolet", "sources.ir_still.modality"),
        ("shards.samples_per_shard=-1", "shards.samples_per_shard"),
    ],
)
def test_bad_values_name_the_key(demo_root, override, key):
    assert f"{key}:" in _err(demo_config_dict(demo_root), [override])


def test_overrides_by_name_and_index(demo_root):
    cfg = load_config(
        None,
        ["sources.ir_video.frame_stride=4", "sources.0.enabled=false", "process.max_side=64"],
        data=demo_config_dict(demo_root),
    )
    assert cfg.sources[1].frame_stride == 4
    assert not cfg.sources[0].enabled
    assert cfg.process.max_side == 64
    with pytest.raises(ConfigError, match="no source named 'nope'"):
        load_config(None, ["sources.nope.root=x"], data=demo_config_dict(demo_root))
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["process.max_side"], data=demo_config_dict(demo_root))


def test_duplicate_names_and_half_suffix_pair(demo_root):
    data = demo_config_dict(demo_root)
    data["sources"][1]["name"] = "ir_still"
    assert "names must be unique" in _err(data)
    data = demo_config_dict(demo_root)
    data["sources"][3]["thermal_suffix"] = "_T"
    assert "sources.rgbt_pairs" in _err(data)


def test_skip_missing_warns_instead(demo_root):
    data = demo_config_dict(demo_root)
    data["sources"][2]["root"] = "nowhere"
    data["skip_missing"] = True
    cfg = load_config(None, data=data)
    assert [s.name for s in cfg.enabled_sources()].count("thermal16") == 0
    assert any("thermal16" in s for s in cfg._skipped)
