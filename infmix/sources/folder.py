"""`folder`: every image under root, recursively; `frame_stride` applies per folder."""

from __future__ import annotations

from pathlib import Path

from infmix.config import FolderSource
from infmix.sources.listing import images_in, strided, walk


def list_folder(src: FolderSource, root: Path) -> list[str]:
    out: list[str] = []
    for rel, files in walk(root):
        out += strided(images_in(rel, files, src), src.frame_stride)
    return out
