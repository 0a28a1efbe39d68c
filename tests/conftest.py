"""Shared fixtures: the demo datasets (generated once per session) and a config over them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from infmix.config import load_config
from infmix.demo import write_demo_sources

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-data")
    write_demo_sources(root, seed=0)
    return root


def demo_config_dict(demo_root: Path, near: bool = False, **process) -> dict:
    """pipelines/demo.yaml over `demo_root`; near-duplicate removal off unless asked, so the
    tests of the other stages see every planted image."""
    data = yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text())
    data["data_root"] = str(demo_root)
    data["process"].update(process)
    data.setdefault("dedup", {}).setdefault("near", {})["enabled"] = near
    return data


@pytest.fixture
def demo_cfg(demo_root):
    return load_config(None, data=demo_config_dict(demo_root))


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight (norm gains, biases, tokens too) so no term is trivially 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model
