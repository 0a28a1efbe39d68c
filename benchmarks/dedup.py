"""Near-duplicate search at scale, and the built-in embedder's throughput.

For each N: N synthetic unit vectors (dimension of the built-in descriptor) with planted
duplicate groups are written to a memory-mapped file; a child process then runs the search +
clustering exactly as `infmix build` does (faiss IVF above `flat_max`, float64 re-scoring,
union-find) and reports its wall time and peak memory (ru_maxrss). IVF recall is measured
against exact search for a random sample of query vectors (an exact all-pairs search of 1M
vectors would take hours). The embedder is timed on 640x512 grayscale images in a child pinned
to one thread. Prints one JSON line.

    python benchmarks/dedup.py [--sizes 100000,1000000] [--recall-queries 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLD = 0.988


def make_vectors(path: Path, n: int, dim: int, seed: int = 0) -> int:
    """Random unit vectors; 10% of them in planted groups of 2-5 near-copies (cos >= ~0.99).
    Returns the number of planted duplicate pairs."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, "w+", np.float32, (n, dim))
    planted = 0
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        v = rng.normal(size=(m, dim)).astype(np.float32)
        i = 0
        while i < int(m * 0.1):
            k = int(rng.integers(2, 6))
            noise = rng.normal(size=(k, dim)).astype(np.float32) * rng.uniform(0.002, 0.006)
            v[i : i + k] = v[i] / np.linalg.norm(v[i]) * np.sqrt(dim) + noise * np.sqrt(dim)
            planted += k * (k - 1) // 2
            i += k
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    out.flush()
    return planted


def child_search(path: Path, out: Path) -> None:
    from infmix.dedup.search import SearchParams, components, pairs_above

    vectors = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    pairs, _ = pairs_above(vectors, SearchParams(THRESHOLD, flat_max=50_000))
    labels = components(len(vectors), pairs)
    wall = time.perf_counter() - t0
    np.save(out, pairs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "peak_bytes": peak,
                "pairs": len(pairs),
                "clusters": len(np.unique(labels)),
            }
        )
    )


def exact_recall(path: Path, ivf_pairs: np.ndarray, n_queries: int) -> float:
    """Share of exact pairs (for sampled queries) that the IVF search also found."""
    import faiss

    vectors = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False))
    index = faiss.IndexFlatIP(vectors.shape[1])
    for s in range(0, len(vectors), 100_000):
        index.add(np.ascontiguousarray(vectors[s : s + 100_000]))
    lims, _, ids = index.range_search(np.ascontiguousarray(vectors[queries]), THRESHOLD)
    exact = set()
    for qi, q in enumerate(queries):
        for j in ids[lims[qi] : lims[qi + 1]]:
            if j != q:
                exact.add((min(q, j), max(q, j)))
    qset = set(queries.tolist())
    found = {(int(a), int(b)) for a, b in ivf_pairs if a in qset or b in qset}
    return len(exact & found) / len(exact) if exact else 1.0


def child_embed(n_images: int) -> None:
    from PIL import Image

    from infmix.dedup.descriptor import thumb_descriptor
    from infmix.dedup.synthetic import make_scene, render, to_u8

    rng = np.random.default_rng(0)
    images = [Image.fromarray(to_u8(render(make_scene(rng)))) for _ in range(20)]
    thumb_descriptor(images[0])
    t0 = time.perf_counter()
    for i in range(n_images):
        thumb_descriptor(images[i % len(images)])
    print(json.dumps({"images_per_s_per_core": round(n_images / (time.perf_counter() - t0), 1)}))


def run_child(*args: str, env: dict | None = None) -> dict:
    p = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--recall-queries", type=int, default=4000)
    ap.add_argument("--embed-images", type=int, default=2000)
    ap.add_argument("--child", choices=["search", "embed"])
    ap.add_argument("--path")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child == "search":
        return child_search(Path(args.path), Path(args.out))
    if args.child == "embed":
        return child_embed(args.embed_images)

    from infmix.dedup.descriptor import DIM

    result: dict = {
        "benchmark": "dedup",
        "dim": DIM,
        "threshold": THRESHOLD,
        "cpus": os.cpu_count(),
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as d:
        for n in (int(s) for s in args.sizes.split(",")):
            path, out = Path(d) / f"v{n}.npy", Path(d) / f"p{n}.npy"
            planted = make_vectors(path, n, DIM)
            r = run_child("--child", "search", "--path", str(path), "--out", str(out))
            r["peak_gib"] = round(r.pop("peak_bytes") / 2**30, 2)
            r["planted_pairs"] = planted
            r["ivf_recall_vs_exact"] = round(
                exact_recall(path, np.load(out), args.recall_queries), 4
            )
            r["target_met"] = (
                r["wall_s"] < 300 and r["peak_gib"] < 8 and r["ivf_recall_vs_exact"] >= 0.98
            )
            result["sizes"][str(n)] = r
            path.unlink()
    one = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    e = run_child("--child", "embed", "--embed-images", str(args.embed_images), env=one)
    result["embedder"] = {**e, "target_met": e["images_per_s_per_core"] >= 1000}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
