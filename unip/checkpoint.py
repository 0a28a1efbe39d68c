"""Training checkpoints: atomic, rotated, and enough state for an exact resume.

`out/checkpoints/step-00001000.pt` holds the student, optimizer, scheduler, step, the RNG
states and the resolved config. Each is written to a temporary name and renamed, so a crash
never leaves a truncated checkpoint under a final name; only the last `keep` are kept.
Everything loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import torch

from unip.errors import UnipError

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def folder(out: Path) -> Path:
    return Path(out) / "checkpoints"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    state["python_gauss"] = random.getstate()[2]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: Path, step: int, payload: dict, keep: int) -> Path:
    path = write(folder(out) / f"step-{step:08d}.pt", payload)
    for old in saved(out)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def write(path: Path, payload: dict) -> Path:
    """torch.save to a temporary name, fsync, rename: `path` is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power loss
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_temporaries(out: Path) -> None:
    """Half-written checkpoints of a killed run (never final, always safe to delete)."""
    for d in (folder(out), Path(out)):
        if not d.is_dir():
            continue
        for p in d.glob(".*.pt.*.tmp"):
            p.unlink(missing_ok=True)


def saved(out: Path) -> list[Path]:
    """Committed checkpoints, oldest first."""
    d = folder(out)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest(out: Path) -> Path | None:
    found = saved(out)
    return found[-1] if found else None


def load(path: Path) -> dict:
    """A unip checkpoint's dict (see read)."""
    state = read(path)
    if not isinstance(state, dict):
        raise UnipError(f"{path}: not a unip checkpoint (holds a {type(state).__name__})")
    return state


def read(path: Path) -> Any:
    """The object in a torch checkpoint file: torch.load with weights_only=True, with only
    argparse.Namespace (in MAE/DINO/UNIP files) allow-listed; anything else pickled is refused,
    never unpickled. A file that cannot be read is a UnipError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UnipError(f"checkpoint {path} not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(str(e))
        if reason.startswith("Unsupported global"):
            raise UnipError(
                f"{path}: refused to load: it holds pickled objects outside the allow-list "
                f"(torch.load weights_only=True; only argparse.Namespace is added): "
                f"{reason.split(' was not')[0]}"
            ) from None
        raise UnipError(f"{path}: not a readable checkpoint ({reason})") from None
    except Exception as e:  # truncated or foreign files fail in many ways (struct, zip, EOF)
        raise UnipError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def _unpickler_reason(message: str) -> str:
    """The one informative line of torch's weights_only error (after 'WeightsUnpickler error:')."""
    _, _, tail = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (tail or message).splitlines() if line.strip()]
    return lines[0] if lines else "unpickling failed"
