"""Similarity search with faiss: all pairs of vectors whose cosine is at least a threshold.

Vectors are L2-normalised, so cosine is inner product. Up to `flat_max` vectors the search is
exact (IndexFlatIP); above, an inverted-file index (IndexIVFFlat, nlist ~ 4 sqrt(n) cells,
`nprobe` probed) keeps it sub-quadratic: a million vectors in minutes on two cores. faiss'
float32 scores only propose candidates (at threshold - 1e-3); every candidate is re-scored in
float64 from the memory-mapped vectors, so which pairs pass does not depend on the index type,
thread count or machine. GPU builds of faiss have no range search: there, a k-NN search
(k = `gpu_k`) proposes the candidates instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_MARGIN = 1e-3
_BATCH = 16384


@dataclass(frozen=True)
class SearchParams:
    threshold: float
    flat_max: int = 50_000
    nlist: int | None = None
    nprobe: int = 16
    gpu_k: int = 64
    use_gpu: bool = True


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("near-duplicate search needs faiss: pip install faiss-cpu") from e
    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def nlist_for(n: int, params: SearchParams) -> int:
    if params.nlist:
        return params.nlist
    return int(min(max(1, n // 39), max(16, 4 * math.isqrt(n))))


def build_index(vectors: np.ndarray, params: SearchParams):
    """An index over `vectors` (n, d); flat up to flat_max, IVF above (trained on a strided
    deterministic sample of at most 64 points per cell)."""
    faiss = _faiss()
    n, d = vectors.shape
    if n <= params.flat_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = nlist_for(n, params)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        step = max(1, n // (64 * nlist))
        index.train(np.ascontiguousarray(vectors[::step], dtype=np.float32))
        index.nprobe = min(params.nprobe, nlist)
    for start in range(0, n, _BATCH * 4):
        index.add(np.ascontiguousarray(vectors[start : start + _BATCH * 4], dtype=np.float32))
    return index


def _candidates(index, queries: np.ndarray, offset: int, params: SearchParams, gpu: bool):
    """(i, j) pairs with i < j proposed by the index for one batch of queries."""
    if gpu:
        scores, ids = index.search(queries, params.gpu_k)
        qi = np.repeat(np.arange(len(queries)) + offset, ids.shape[1])
        keep = (ids.ravel() >= 0) & (scores.ravel() >= params.threshold - _MARGIN)
        i, j = qi[keep], ids.ravel()[keep]
    else:
        lims, _scores, ids = index.range_search(queries, params.threshold - _MARGIN)
        i = np.repeat(np.arange(len(queries)) + offset, np.diff(lims).astype(np.int64))
        j = ids
    keep = i < j
    return i[keep].astype(np.int64), j[keep].astype(np.int64)


def pairs_above(vectors: np.ndarray, params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i < j, with cosine >= threshold, and their float64 cosines, sorted."""
    n = len(vectors)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float64)
    faiss = _faiss()
    index = build_index(vectors, params)
    gpu = params.use_gpu and gpu_available()
    if gpu:  # pragma: no cover - needs a faiss GPU build
        index = faiss.index_cpu_to_all_gpus(index)
    found_i, found_j = [], []
    for start in range(0, n, _BATCH):
        q = np.ascontiguousarray(vectors[start : start + _BATCH], dtype=np.float32)
        i, j = _candidates(index, q, start, params, gpu)
        found_i.append(i)
        found_j.append(j)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    sims = exact_cosines(vectors, i, j)
    keep = sims >= params.threshold
    pairs = np.unique(np.stack([i[keep], j[keep]], axis=1), axis=0)
    return pairs, exact_cosines(vectors, pairs[:, 0], pairs[:, 1])


def exact_cosines(vectors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """float64 dot products of rows i and j, in batches (vectors may be a memmap)."""
    out = np.empty(len(i), np.float64)
    for s in range(0, len(i), _BATCH):
        a = np.asarray(vectors[i[s : s + _BATCH]], np.float64)
        b = np.asarray(vectors[j[s : s + _BATCH]], np.float64)
        out[s : s + _BATCH] = np.einsum("ij,ij->i", a, b)
    return out


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components by union-find: label[i] = smallest index in i's component."""
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)], dtype=np.int64)
