"""`paired`: RGB/thermal pairs (LLVIP, FLIR ADAS, KAIST, M3FD, RGBT-CC); the thermal side only.

Sibling-folder layouts take every image under a folder named `thermal_dir` (at any depth);
suffix layouts take files whose stem ends with `thermal_suffix`. The visible partner, when it
exists, is recorded in the plan so later stages can use the pair.
"""

from __future__ import annotations

from pathlib import Path

from infmix.config import PairedSource
from infmix.sources.listing import images_in, strided, walk


def list_paired(src: PairedSource, root: Path) -> list[str]:
    out: list[str] = []
    for rel, files in walk(root):
        if src.thermal_suffix is None:
            if src.thermal_dir not in rel.parts:
                continue
            out += strided(images_in(rel, files, src), src.frame_stride)
        else:
            thermal = [
                r for r in images_in(rel, files, src) if Path(r).stem.endswith(src.thermal_suffix)
            ]
            out += strided(thermal, src.frame_stride)
    return out


def visible_partner(src: PairedSource, root: Path, relpath: str) -> str | None:
    """Relative path of the visible image paired with a thermal one, if it exists."""
    p = Path(relpath)
    if src.thermal_suffix is None:
        parts = [src.visible_dir if x == src.thermal_dir else x for x in p.parent.parts]
        folder, stem = Path(*parts) if parts else Path(), p.stem
    else:
        folder, stem = p.parent, p.stem[: -len(src.thermal_suffix)] + src.visible_suffix
    for ext in src.extensions:
        for cand in (folder / f"{stem}.{ext}", folder / f"{stem}.{ext.upper()}"):
            if (root / cand).is_file():
                return cand.as_posix()
    return None
