"""`video`: sequences stored as frame folders; every `frame_stride`-th frame of each.

A sequence is any folder that directly holds frames (or, with `frames_subdir`, any folder of
that name), so `<seq>/*.jpg`, `<seq>/infrared/*.jpg` and `setXX/VYYY/lwir/*.jpg` all work.
"""

from __future__ import annotations

from pathlib import Path

from infmix.config import VideoSource
from infmix.sources.listing import images_in, strided, walk


def list_video(src: VideoSource, root: Path) -> list[str]:
    out: list[str] = []
    for rel, files in walk(root):
        if src.frames_subdir is not None and rel.name != src.frames_subdir:
            continue
        out += strided(images_in(rel, files, src), src.frame_stride)
    return out
