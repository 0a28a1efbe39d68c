"""File listing shared by all source kinds: deterministic order, extension and exclude filters.

`os.scandir` order depends on the file system, so every listing is sorted here (naturally, so
unpadded frame numbers keep their sequence order).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from infmix.sample import natural_key


def _sorted_entries(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted (sub-folder names, file names) of one folder."""
    dirs, files = [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            (dirs if e.is_dir(follow_symlinks=True) else files).append(e.name)
    return sorted(dirs, key=natural_key), sorted(files, key=natural_key)


def walk(root: Path):
    """Yield (folder relative to root, sorted file names) depth first, in sorted order.

    Symlinked folders are followed once: a folder already visited (a symlink loop, or two
    links to one folder) is not listed again, so no file is planned twice.
    """
    stack, seen = [Path()], set()
    while stack:
        rel = stack.pop()
        real = os.path.realpath(root / rel)
        if real in seen:
            continue
        seen.add(real)
        dirs, files = _sorted_entries(root / rel)
        yield rel, files
        stack.extend(rel / d for d in reversed(dirs))


def is_image(name: str, extensions: list[str]) -> bool:
    return name.rsplit(".", 1)[-1].lower() in extensions if "." in name else False


def excluded(relpath: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(relpath, p) for p in patterns)


def images_in(rel: Path, files: list[str], src) -> list[str]:
    """Relative paths of the image files of one folder, after the source's filters."""
    out = []
    for f in files:
        relpath = (rel / f).as_posix()
        if is_image(f, src.extensions) and not excluded(relpath, src.exclude):
            out.append(relpath)
    return out


def strided(relpaths: list[str], stride: int) -> list[str]:
    return relpaths[::stride]
