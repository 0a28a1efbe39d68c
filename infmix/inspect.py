"""`infmix inspect`: what a finished build holds, read without extracting anything.

Counts and sizes come from manifest.parquet and stats.json (every sample). The intensity
histogram and the contact sheet decode a seeded sample only, picked by sha256 of (seed, key) as
shards.py shuffles, so a seed picks the same images on every machine and numpy version. Images
are read straight from the tar shards (each opened once) under the build's size caps.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from infmix import atomic
from infmix.config import ProcessConfig
from infmix.errors import InfmixError
from infmix.steps.decode import Rejected, decode

REQUIRED = ("manifest.parquet", "_info.json", "stats.json")  # a build writes _info.json last
COLUMNS = ("key", "shard", "source", "modality", "ext", "width", "height", "bytes")
SIDE_EDGES = (0, 128, 256, 384, 512, 640, 768, 1024, 1280, 1920, 2560, 4096)
PERCENTILES = (10, 50, 90)
BINS = 16  # 16 grey levels each
THUMB, GAP, CAPTION, LABEL_W, TOP = 128, 8, 30, 132, 28  # contact sheet layout, pixels
CELL, ROW_H = THUMB + GAP, THUMB + CAPTION + GAP


def rank(keys: list[str], seed: int) -> list[int]:
    """Indices of `keys` in seeded random order; a random sample of n is the first n."""
    digests = [hashlib.sha256(f"{seed}:{k}".encode()).digest() for k in keys]
    return sorted(range(len(keys)), key=digests.__getitem__)


def inspect(out: Path, per_source: int = 6, sample: int = 2000, seed: int = 0) -> dict:
    """Summarise the build in `out` and write `out/samples.png`, a row of images per source."""
    out = Path(out)
    rows, stats, info = load(out)
    order = rank(rows["key"], seed)
    histogram = set(order[:sample])
    shown: dict[str, list[int]] = defaultdict(list)
    for i in order:
        if len(shown[rows["source"][i]]) < per_source:
            shown[rows["source"][i]].append(i)
    on_sheet = {i for idx in shown.values() for i in idx}
    counts = np.zeros(BINS, np.int64)
    thumbs: dict[int, Image.Image] = {}
    for i, im in read_images(out, rows, histogram | on_sheet):
        if i in histogram:
            counts += np.bincount(np.asarray(im).ravel() >> 4, minlength=BINS)
        if i in on_sheet:
            im.thumbnail((THUMB, THUMB))
            thumbs[i] = im
    sources = per_source_counts(rows, stats)
    cells = {s: [(rows["key"][i], thumbs[i]) for i in shown[s]] for s in sources}
    title = f"{info.get('name', out.name)}: {len(rows['key'])} samples, seed {seed}"
    buf = io.BytesIO()
    contact_sheet(title, sources, cells).save(buf, "PNG")
    atomic.write_bytes(out / "samples.png", buf.getvalue())
    total = int(counts.sum())
    return {
        "out": str(out),
        "samples": len(rows["key"]),
        "shards": len(info["splits"]["train"]["filenames"]),
        "bytes": int(rows["bytes"].sum()),
        "shard_bytes": sum(p.stat().st_size for p in shard_paths(out, info)),
        "sources": sources,
        "size": size_distribution(rows["width"], rows["height"]),
        "intensity": {
            "levels_per_bin": 256 // BINS,
            "fraction": [int(c) / total if total else 0.0 for c in counts],
            "pixels": total,
            "sampled": len(histogram),
            "seed": seed,
        },
        "contact_sheet": str(out / "samples.png"),
    }


def load(out: Path) -> tuple[dict[str, list | np.ndarray], dict, dict]:
    """The manifest's columns, stats.json and _info.json; a clear error if the build is not
    finished (or not a build at all)."""
    if not out.is_dir():
        raise InfmixError(f"{out} is not a folder")
    missing = [name for name in REQUIRED if not (out / name).is_file()]
    if missing:
        raise InfmixError(
            f"{out} is not a finished infmix build: no {', '.join(missing)} "
            "(run `infmix build CONFIG --out DIR` to completion first)"
        )
    try:
        table = pq.read_table(out / "manifest.parquet")
        stats = json.loads((out / "stats.json").read_text())
        info = json.loads((out / "_info.json").read_text())
    except ValueError as e:  # pyarrow's ArrowInvalid and JSONDecodeError are ValueErrors
        raise InfmixError(f"{out}: unreadable build file: {e}") from None
    absent = [c for c in COLUMNS if c not in table.column_names]
    if table.num_rows and absent:
        raise InfmixError(f"{out / 'manifest.parquet'} has no column {', '.join(absent)}")
    rows = {c: table.column(c).to_pylist() if table.num_rows else [] for c in COLUMNS[:5]}
    for c in COLUMNS[5:]:  # numbers as arrays: a million-row manifest stays small in memory
        rows[c] = table.column(c).to_numpy() if table.num_rows else np.zeros(0, np.int64)
    missing = [str(p) for p in shard_paths(out, info) if not p.is_file()]
    if missing:
        raise InfmixError(f"shards listed in _info.json are missing: {', '.join(missing[:3])}")
    return rows, stats, info


def shard_paths(out: Path, info: dict) -> list[Path]:
    return [out / name for name in info["splits"]["train"]["filenames"]]


def process_limits(out: Path) -> tuple[int, int]:
    """max_pixels and max_file_bytes of the build that wrote `out` (defaults without one)."""
    path, default = out / "config.yaml", ProcessConfig()
    try:
        saved = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    except yaml.YAMLError as e:
        raise InfmixError(f"{path}: unreadable: {e}") from None
    process = saved.get("process") or {}
    max_pixels = int(process.get("max_pixels", default.max_pixels))
    # a stored image may be larger than its input (a JPEG re-encoded as PNG), but never more
    # than its pixels plus framing: one byte a pixel
    stored = max(int(process.get("max_file_bytes", default.max_file_bytes)), max_pixels + 2**20)
    return max_pixels, stored


def read_images(
    out: Path, rows: dict[str, list | np.ndarray], wanted: set[int]
) -> Iterator[tuple[int, Image.Image]]:
    """(row, mode-L image) for every wanted manifest row, shard by shard, in tar order.

    A shard is scanned once, up to its last wanted member; a member over the build's
    max_file_bytes, or an image whose header claims more than max_pixels, is an error (a
    decompression bomb planted in a shard), never decoded."""
    limits = process_limits(out)
    by_shard: dict[str, dict[str, int]] = defaultdict(dict)
    for i in sorted(wanted):
        by_shard[rows["shard"][i]][f"{rows['key'][i]}.{rows['ext'][i]}"] = i
    for shard, names in sorted(by_shard.items()):
        path = out / "shards" / Path(shard).name
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    i = names.pop(member.name, None)
                    if i is not None:
                        yield i, _decode_member(tar, member, path, limits)
                    if not names:
                        break
        except tarfile.TarError as e:
            raise InfmixError(f"{path}: unreadable shard: {e}") from None
        if names:
            raise InfmixError(
                f"{path} lacks {len(names)} samples of the manifest, e.g. {min(names)}"
            )


def _decode_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, limits: tuple[int, int]
) -> Image.Image:
    where, (max_pixels, max_bytes) = f"{path.name}: {member.name}", limits
    if not member.isfile() or member.size > max_bytes:
        raise InfmixError(f"{where}: not a file, or over {max_bytes} bytes")
    try:
        return decode(tar.extractfile(member).read(), max_pixels).image.convert("L")
    except Rejected as e:
        raise InfmixError(f"{where}: {e}") from None


def per_source_counts(rows: dict[str, list | np.ndarray], stats: dict) -> dict[str, dict]:
    """Kept (from the manifest) beside seen, duplicates and rejected (from stats.json)."""
    kept = Counter(rows["source"])
    stored: Counter = Counter()
    modality = {}
    for source, mod, n in zip(
        rows["source"], rows["modality"], rows["bytes"].tolist(), strict=True
    ):
        stored[source] += n
        modality.setdefault(source, mod)
    built = stats.get("sources", {})
    out = {}
    for name in sorted(set(kept) | set(built)):
        dropped = built.get(name, {}).get("dropped", {})
        dups = sum(v for k, v in dropped.items() if k.endswith("duplicate"))
        out[name] = {
            "modality": modality.get(name),
            "kept": kept[name],
            "seen": built.get(name, {}).get("seen"),
            "duplicates": dups,
            "rejected": sum(dropped.values()) - dups,
            "bytes": stored[name],
        }
    return out


def size_distribution(widths: np.ndarray, heights: np.ndarray) -> dict:
    """Min, percentiles (nearest rank) and max of each side; a coarse histogram of the longer."""
    if len(widths) == 0:
        return {"width": None, "height": None, "longer_side": []}

    def spread(values: np.ndarray) -> dict:
        q = {f"p{p}": int(np.percentile(values, p, method="nearest")) for p in PERCENTILES}
        return {"min": int(values.min()), **q, "max": int(values.max())}

    w, h = np.asarray(widths), np.asarray(heights)
    bins = np.searchsorted(SIDE_EDGES, np.maximum(w, h), side="right") - 1
    counts = np.bincount(bins, minlength=len(SIDE_EDGES))
    uppers = [*SIDE_EDGES[1:], None]
    side = [
        {"from": lo, "to": hi, "count": int(n)}
        for lo, hi, n in zip(SIDE_EDGES, uppers, counts, strict=True)
    ]
    return {"width": spread(w), "height": spread(h), "longer_side": side}


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size)  # Pillow's bundled font: the same bytes everywhere


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """`text`, its middle cut out until it fits: keys differ at the start and the end."""
    for keep in range(len(text), 1, -1):
        short = text if keep == len(text) else f"{text[: -(-keep // 2)]}..{text[-(keep // 2) :]}"
        if draw.textlength(short, font=font) <= width:
            return short
    return text[:1]


def _caption(draw: ImageDraw.ImageDraw, key: str, width: int, font) -> str:
    """A key on two lines: as much of its start as fits, then the rest (its middle cut)."""
    n = len(key)
    while n > 1 and draw.textlength(key[:n], font=font) > width:
        n -= 1
    if n == len(key):
        return key
    if key.rfind("_", 0, n) >= n // 2:  # break after an underscore when one is near
        n = key.rfind("_", 0, n) + 1
    return f"{key[:n]}\n{_fit(draw, key[n:], width, font)}"


def contact_sheet(
    title: str, sources: dict[str, dict], cells: dict[str, list[tuple[str, Image.Image]]]
) -> Image.Image:
    """A row per source: its name and counts, then its thumbnails, each captioned with its key."""
    columns = max([len(c) for c in cells.values()] + [1])
    sheet = Image.new("L", (LABEL_W + columns * CELL, TOP + max(1, len(sources)) * ROW_H), 255)
    draw = ImageDraw.Draw(sheet)
    small, large = _font(11), _font(14)
    draw.text((GAP, 6), _fit(draw, title, sheet.width - 2 * GAP, large), fill=0, font=large)
    for y, (name, s) in enumerate(sources.items()):
        top = TOP + y * ROW_H
        draw.text((GAP, top + 4), _fit(draw, name, LABEL_W - 2 * GAP, large), fill=0, font=large)
        draw.text((GAP, top + 24), f"{s['kept']} kept", fill=0, font=small)
        draw.text((GAP, top + 38), s["modality"] or "", fill=80, font=small)
        if not cells[name]:
            draw.text((LABEL_W, top + THUMB // 2), "no samples kept", fill=0, font=small)
        for x, (key, im) in enumerate(cells[name]):  # top-aligned, its key right under it
            left = LABEL_W + x * CELL
            sheet.paste(im, (left + (THUMB - im.width) // 2, top))
            caption = _caption(draw, key, THUMB, small)
            draw.multiline_text((left, top + im.height + 3), caption, fill=0, font=small, spacing=2)
    return sheet


def print_inspect(console: Console, summary: dict) -> None:
    """Overview, per-source counts, size distribution and the intensity histogram."""
    overview = Table(title=f"infmix inspect: {summary['out']}", show_header=False)
    overview.add_row("samples", f"{summary['samples']:,}")
    overview.add_row("shards", f"{summary['shards']:,} ({summary['shard_bytes'] / 1e6:,.1f} MB)")
    overview.add_row("stored images", f"{summary['bytes'] / 1e6:,.1f} MB")
    overview.add_row("contact sheet", summary["contact_sheet"])
    console.print(overview)
    console.print(_sources_table(summary["sources"]))
    _print_sizes(console, summary["size"])
    t = summary["intensity"]
    step = t["levels_per_bin"]
    _histogram(
        console,
        f"pixel intensity: {t['sampled']:,} of {summary['samples']:,} images (seed {t['seed']})",
        [(f"{i * step}-{i * step + step - 1}", f) for i, f in enumerate(t["fraction"])],
        percent=True,
    )


def _sources_table(sources: dict[str, dict]) -> Table:
    table = Table(title="per source")
    for col in ("source", "modality", "seen", "kept", "duplicates", "rejected", "stored MB"):
        table.add_column(col, justify="left" if col in ("source", "modality") else "right")
    for name, s in sources.items():
        table.add_row(
            name,
            s["modality"] or "-",
            "-" if s["seen"] is None else str(s["seen"]),
            *(str(s[k]) for k in ("kept", "duplicates", "rejected")),
            f"{s['bytes'] / 1e6:.2f}",
        )
    return table


def _print_sizes(console: Console, size: dict) -> None:
    if not size["width"]:
        return
    table = Table(title="image size (pixels)")
    table.add_column("")
    for col in size["width"]:
        table.add_column(col, justify="right")
    for side in ("width", "height"):
        table.add_row(side, *(str(v) for v in size[side].values()))
    console.print(table)
    used = [i for i, b in enumerate(size["longer_side"]) if b["count"]]
    bins = size["longer_side"][used[0] : used[-1] + 1]  # the empty ends say nothing
    _histogram(console, "longer side", [(_range(b["from"], b["to"]), b["count"]) for b in bins])


def _range(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi - 1}" if hi else f">={lo}"


def _histogram(
    console: Console, title: str, bins: list[tuple[str, float]], percent: bool = False
) -> None:
    """A text bar chart: label, value, bar scaled to the largest bin."""
    table = Table(title=title, show_header=False, box=None)
    table.add_column(justify="right")
    table.add_column(justify="right")
    table.add_column()
    peak = max([v for _, v in bins] + [0])
    total = sum(v for _, v in bins) or 1
    for label, v in bins:
        value = f"{100 * v:.1f}%" if percent else f"{v:,} ({100 * v / total:.0f}%)"
        table.add_row(label, value, "█" * round(30 * v / peak) if peak else "")
    console.print(table)
