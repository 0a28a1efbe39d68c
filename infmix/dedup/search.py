"""Similarity search with faiss: all pairs of vectors whose cosine is at least a threshold.

Vectors are L2-normalised, so cosine is inner product. Up to `flat_max` vectors the search is
exact (IndexFlatIP). Above, candidates come from an inverted-file index over a 64-d PCA of the
vectors (faiss `PCA64,L2norm,IVF<nlist>_HNSW32,Flat`: nlist ~ 4 sqrt(n) cells, an HNSW graph
over the cell centroids, `nprobe` cells probed per query, centroids from 8 k-means rounds on
32 points per cell), searched at a lower similarity, 1 - 2 (1 - threshold), so pairs the
projection moves apart are still proposed. That keeps a million vectors to about two minutes
on two cores, with recall against exact search measured by benchmarks/dedup.py.

Every candidate is re-scored in float64 from the full memory-mapped vectors, so which pairs
pass never depends on the index type, thread count or machine; the index only decides what
is looked at. With a GPU build of faiss (and a GPU), the search is an exact flat k-NN on the
GPU instead (k = `gpu_k` neighbours proposed per image; GPU faiss has no range search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

_MARGIN = 1e-3
_BATCH = 16384


@dataclass(frozen=True)
class SearchParams:
    threshold: float
    flat_max: int = 50_000
    nlist: int | None = None
    nprobe: int = 8
    gpu_k: int = 64
    use_gpu: bool = True
    ivf_dim: int = 64

    def radius(self, ivf: bool) -> float:
        """Similarity at which the index proposes candidates."""
        return (1 - 2 * (1 - self.threshold) if ivf else self.threshold) - _MARGIN


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
    return int(min(max(1, n // 32), max(16, 4 * math.isqrt(n))))


def build_index(vectors: np.ndarray, params: SearchParams):
    """An index over `vectors` (n, d): flat up to flat_max, PCA + IVF above (trained on a
    strided, deterministic sample)."""
    faiss = _faiss()
    n, d = vectors.shape
    if n <= params.flat_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = nlist_for(n, params)
        step = max(1, n // (32 * nlist))
        sample = np.ascontiguousarray(vectors[::step], dtype=np.float32)
        use_pca = params.ivf_dim < d <= len(sample)  # a PCA needs more points than dims
        pca = f"PCA{params.ivf_dim},L2norm," if use_pca else ""
        index = faiss.index_factory(d, f"{pca}IVF{nlist}_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 8
        index.train(sample)
        ivf.nprobe = min(params.nprobe, nlist)
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = max(64, 2 * ivf.nprobe)
    for start in range(0, n, _BATCH * 4):
        index.add(np.ascontiguousarray(vectors[start : start + _BATCH * 4], dtype=np.float32))
    return index


def _candidates(
    index, queries: np.ndarray, offset: int, radius: float, params: SearchParams, gpu: bool
):
    """(i, j) pairs with i < j proposed by the index for one batch of queries."""
    if gpu:
        scores, ids = index.search(queries, params.gpu_k)
        qi = np.repeat(np.arange(len(queries)) + offset, ids.shape[1])
        keep = (ids.ravel() >= 0) & (scores.ravel() >= radius)
        i, j = qi[keep], ids.ravel()[keep]
    else:
        lims, _scores, ids = index.range_search(queries, radius)
        i = np.repeat(np.arange(len(queries)) + offset, np.diff(lims).astype(np.int64))
        j = ids
    keep = i < j
    return i[keep].astype(np.int64), j[keep].astype(np.int64)


def pairs_above(vectors: np.ndarray, params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i < j, with cosine >= threshold, and their float64 cosines, sorted."""
    n = len(vectors)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float64)
    gpu = params.use_gpu and gpu_available()
    if gpu:  # pragma: no cover - needs a faiss GPU build
        # exact k-NN on the GPU is fast even for millions (no IVF needed, and GPU faiss
        # supports neither range search nor an HNSW quantizer)
        index = _faiss().index_cpu_to_all_gpus(build_index(vectors, replace(params, flat_max=n)))
        radius = params.radius(ivf=False)
    else:
        index = build_index(vectors, params)
        radius = params.radius(ivf=n > params.flat_max)
    found_i, found_j = [], []
    for start in range(0, n, _BATCH):
        q = np.ascontiguousarray(vectors[start : start + _BATCH], dtype=np.float32)
        i, j = _candidates(index, q, start, radius, params, gpu)
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
