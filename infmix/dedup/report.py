"""What the near-duplicate stage shows: duplicates.parquet and a contact sheet to judge the
threshold by eye (the largest clusters, one per row, representative first)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from infmix import atomic, chunks

COLUMNS = ("key", "cluster", "representative", "similarity", "kept", "source", "modality")
THUMB = 112
MAX_CLUSTERS = 8
MAX_MEMBERS = 8


def write_duplicates(out: Path, work: Path, clusters: list[dict]) -> None:
    table = (
        pa.table({c: [r[c] for r in clusters] for c in COLUMNS})
        if clusters
        else pa.table({c: pa.array([], t) for c, t in zip(COLUMNS, _TYPES, strict=True)})
    )
    atomic.write_with(out / "duplicates.parquet", lambda f: pq.write_table(table, f))
    buf = io.BytesIO()
    contact_sheet(work, clusters).save(buf, "PNG")
    atomic.write_bytes(out / "duplicates.png", buf.getvalue())


_TYPES = (pa.string(), pa.int64(), pa.string(), pa.float64(), pa.bool_(), pa.string(), pa.string())


def _thumb(work: Path, row: dict) -> Image.Image:
    rec = {
        "key": row["key"],
        "offset": row["offset"],
        "length": row["length"],
        "meta": {"sha256": row["sha256"]},
    }
    im = Image.open(io.BytesIO(chunks.read_image(work, row["unit"], rec))).convert("L")
    im.thumbnail((THUMB, THUMB))
    return im


def contact_sheet(work: Path, clusters: list[dict]) -> Image.Image:
    """Rows of the largest clusters; each thumbnail captioned with its similarity to the
    representative (the first, framed)."""
    by_id: dict[int, list[dict]] = {}
    for r in clusters:
        by_id.setdefault(r["cluster"], []).append(r)
    biggest = sorted(by_id.values(), key=lambda m: (-len(m), m[0]["cluster"]))[:MAX_CLUSTERS]
    cell, caption = THUMB + 8, 14
    height = max(1, len(biggest)) * (cell + 2 * caption)
    columns = max([min(len(m), MAX_MEMBERS) for m in biggest] + [3])
    sheet = Image.new("L", (columns * cell + 8, height + 4), 255)
    draw = ImageDraw.Draw(sheet)
    if not biggest:
        draw.text((8, 8), "no near-duplicate clusters", fill=0)
    for y, members in enumerate(biggest):
        top = y * (cell + 2 * caption)
        members = sorted(members, key=lambda r: (not r["kept"], -r["similarity"], r["key"]))
        draw.text(
            (4, top + 1),
            f"cluster {members[0]['cluster']}: {len(members)} images, kept {members[0]['key']}",
            fill=0,
        )
        for x, row in enumerate(members[:MAX_MEMBERS]):
            left = 4 + x * cell
            sheet.paste(_thumb(work, row), (left, top + caption))
            if row["kept"]:
                draw.rectangle(
                    (left - 2, top + caption - 2, left + THUMB + 1, top + caption + THUMB + 1),
                    outline=0,
                    width=2,
                )
            draw.text((left, top + caption + THUMB + 2), f"{row['similarity']:.4f}", fill=0)
    return sheet
