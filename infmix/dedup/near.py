"""Near-duplicate stage: vectors on disk -> faiss search per group -> clusters -> keep one each.

Vectors of the records that survived exact dedup are gathered into one memory-mapped file,
ordered by group (modality, and source when scope is `source`) so each group is a contiguous
slice: the stage's memory is the faiss index plus fixed-size batches. Only images of the same
modality are ever compared. Each group's pairs are committed to their own file, so a killed
run searches only the groups it had not finished.

Keep rule, per cluster (connected component of the "similar" graph): the image with the most
original pixels, then the earliest in plan order. The others are dropped as `near_duplicate`
of it. Chains (frame 1 ~ 2 ~ 3 ...) join one cluster, as consecutive video frames should.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infmix import atomic, chunks, failpoints
from infmix.config import NearDedupConfig
from infmix.dedup.search import SearchParams, components, exact_cosines, pairs_above


@dataclass
class NearResult:
    kept: list[dict]
    dropped: list[dict]
    clusters: list[dict]


def group_name(rec: dict, scope: str) -> str:
    m = rec["meta"]
    return m["modality"] if scope == "all" else f"{m['modality']}-{m['source']}"


def _layout(kept: list[dict], scope: str) -> tuple[np.ndarray, dict[str, slice]]:
    """Row order of the vectors file (group by group) and each group's slice of it."""
    names = [group_name(r, scope) for r in kept]
    order = np.array(sorted(range(len(kept)), key=lambda i: (names[i], i)), dtype=np.int64)
    groups: dict[str, slice] = {}
    start = 0
    for name in sorted(set(names)):
        n = names.count(name)
        groups[name] = slice(start, start + n)
        start += n
    return order, groups


def _vectors(kept: list[dict], order: np.ndarray, work: Path, dim: int) -> np.ndarray:
    """The memory-mapped (n, dim) float32 vectors in `order`; assembled once, atomically."""
    path = work / "dedup" / f"vectors-{len(kept)}x{dim}.f32"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.tmp_name(path)
        out = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(kept), dim))
        row_of = np.empty(len(kept), np.int64)
        row_of[order] = np.arange(len(kept))
        by_unit: dict[int, list[int]] = {}
        for i, r in enumerate(kept):
            by_unit.setdefault(r["unit"], []).append(i)
        for unit, members in sorted(by_unit.items()):
            rows = chunks.read_embeddings(work, unit, kept[members[0]]["unit_rows"], dim)
            out[row_of[members]] = rows[[kept[i]["emb_row"] for i in members]]
        out.flush()
        del out
        os.replace(tmp, path)
        failpoints.hit("dedup.after_vectors")
    return np.load(path, mmap_mode="r")


def _group_pairs(
    vectors: np.ndarray, sl: slice, name: str, work: Path, params: SearchParams
) -> np.ndarray:
    """Pairs (rows of the vectors file) of one group; committed per group."""
    path = work / "dedup" / f"pairs-{name}-{params.threshold}.npy"
    if not path.exists():
        pairs, _ = pairs_above(vectors[sl], params)
        buf = io.BytesIO()
        np.save(buf, pairs + sl.start)
        atomic.write_bytes(path, buf.getvalue(), durable=False)
        failpoints.hit("dedup.after_group")
    return np.load(path)


def near_duplicates(kept: list[dict], cfg: NearDedupConfig, work: Path, dim: int) -> NearResult:
    if len(kept) < 2:
        return NearResult(kept, [], [])
    atomic.remove_temporaries(work / "dedup")
    order, groups = _layout(kept, cfg.scope)
    vectors = _vectors(kept, order, work, dim)
    params = SearchParams(cfg.threshold, cfg.flat_max, cfg.nlist, cfg.nprobe)
    pairs = [_group_pairs(vectors, sl, name, work, params) for name, sl in groups.items()]
    edges = order[np.concatenate(pairs)] if pairs else np.zeros((0, 2), np.int64)
    labels = components(len(kept), edges)  # in plan-order indices of `kept`
    return _resolve(kept, labels, vectors, order)


def _resolve(
    kept: list[dict], labels: np.ndarray, vectors: np.ndarray, order: np.ndarray
) -> NearResult:
    row_of = np.empty(len(kept), np.int64)
    row_of[order] = np.arange(len(kept))
    members: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        members.setdefault(int(lab), []).append(i)
    clusters = [m for m in members.values() if len(m) > 1]
    reps = [max(m, key=lambda i: (_pixels(kept[i]), -i)) for m in clusters]
    order_c = sorted(range(len(clusters)), key=lambda c: reps[c])
    drop: dict[int, tuple[int, int, float]] = {}
    rows = []
    for cid, c in enumerate(order_c):
        rep, m = reps[c], clusters[c]
        sims = exact_cosines(vectors, row_of[m], np.full(len(m), row_of[rep]))
        for i, sim in zip(m, sims, strict=True):
            rows.append(_cluster_row(kept[i], cid, kept[rep]["key"], float(sim), i == rep))
            if i != rep:
                drop[i] = (cid, rep, float(sim))
    dropped = [
        {
            **kept[i],
            "reason": "near_duplicate",
            "duplicate_of": kept[rep]["key"],
            "detail": f"similarity {sim:.4f} to {kept[rep]['key']} (cluster {cid})",
        }
        for i, (cid, rep, sim) in sorted(drop.items())
    ]
    remaining = [r for i, r in enumerate(kept) if i not in drop]
    return NearResult(remaining, dropped, rows)


def _pixels(rec: dict) -> int:
    o = rec["meta"]["original"]
    return int(o["width"]) * int(o["height"])


def _cluster_row(rec: dict, cid: int, rep_key: str, sim: float, is_rep: bool) -> dict:
    return {
        "key": rec["key"],
        "cluster": cid,
        "representative": rep_key,
        "similarity": round(sim, 6),
        "kept": is_rep,
        "source": rec["meta"]["source"],
        "modality": rec["meta"]["modality"],
        "unit": rec["unit"],
        "offset": rec["offset"],
        "length": rec["length"],
        "sha256": rec["meta"]["sha256"],
    }
