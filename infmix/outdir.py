"""The output folder: claimed under a lock, recognised by a marker, keyed by a fingerprint.

A build takes an exclusive lock on `--out` (a second build into it fails at once), refuses a
non-empty folder that is not an infmix build (and `--overwrite` only ever deletes infmix
builds), and refuses to resume a build made with another config or another environment
(Pillow, libjpeg-turbo, zlib and numpy versions change the stored bytes). Work files live under
`work/<fingerprint>/`, so stragglers of another config can never be mixed in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL
from PIL import features

from infmix import __version__, atomic
from infmix.errors import InfmixError

MARKER = ".infmix-build.json"
LOCK = ".infmix.lock"
OUTPUTS = (
    "config.yaml",
    "work",
    "shards",
    "_info.json",
    "manifest.parquet",
    "rejected.jsonl",
    "stats.json",
    "duplicates.parquet",
    "duplicates.png",
    "samples.png",  # written by `infmix inspect`
    MARKER,
)


def environment() -> dict:
    """The versions that decide the stored bytes."""
    return {
        "infmix": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "zlib": features.version("zlib"),
    }


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _clear(out: Path) -> None:
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _check_reuse(out: Path, config_text: str, env: dict) -> None:
    saved = out / "config.yaml"
    if saved.exists() and saved.read_text() != config_text:
        raise InfmixError(
            f"{out} holds a build made with a different config; use another "
            "--out, or --overwrite to start it again"
        )
    marker = json.loads((out / MARKER).read_text())
    if marker.get("environment") != env:
        changed = {
            k: (marker.get("environment", {}).get(k), v)
            for k, v in env.items()
            if marker.get("environment", {}).get(k) != v
        }
        raise InfmixError(
            f"{out} was built in another environment {changed} (old, new); its "
            "bytes would differ from a fresh build: --overwrite to rebuild it"
        )


@contextmanager
def claim(out: Path, config_text: str, overwrite: bool) -> Iterator[Path]:
    """Lock and prepare `out`; yields the work folder of this config and environment."""
    if out.exists() and not out.is_dir():
        raise InfmixError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InfmixError(f"another infmix build is writing to {out}") from None
        ours = (out / MARKER).exists()
        foreign = [
            p.name
            for p in out.iterdir()
            if p.name not in (LOCK, MARKER) and not _is_temporary(p.name)
        ]
        if not ours and foreign:
            raise InfmixError(
                f"{out} is not empty and is not an infmix build folder "
                f"(it holds {sorted(foreign)[:3]}); use an empty or new --out"
            )
        env = environment()
        if ours and overwrite:
            _clear(out)
        elif ours:
            _check_reuse(out, config_text, env)
        atomic.remove_temporaries(out)
        fingerprint = hashlib.sha256((config_text + json.dumps(env, sort_keys=True)).encode())
        if not (out / MARKER).exists():
            atomic.write_json(out / MARKER, {"environment": env})
        if not (out / "config.yaml").exists():
            atomic.write_text(out / "config.yaml", config_text)
        yield out / "work" / fingerprint.hexdigest()[:16]
