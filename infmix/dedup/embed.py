"""The embedding stage for model embedders: one `.emb.npy` per processed unit, resumable.

The built-in descriptor is computed while images are processed (no second decode); a timm
model runs here instead, after processing, reading back the stored images of each unit, so
a GPU embeds in large batches while the CPU pool did the decoding. Each unit's embeddings are
committed by rename, so a killed run re-embeds only the unfinished units.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from infmix import chunks
from infmix.config import NearDedupConfig
from infmix.dedup.descriptor import DIM


def uses_builtin(cfg: NearDedupConfig) -> bool:
    return cfg.enabled and cfg.embedder == "thumb"


def make_embedder(cfg: NearDedupConfig):
    from infmix.dedup.timm_embedder import TimmEmbedder

    return TimmEmbedder(
        cfg.embedder.removeprefix("timm:"), cfg.checkpoint, cfg.device, cfg.batch_size
    )


def embed_units(
    work: Path, n_units: int, cfg: NearDedupConfig, on_done: Callable[[int], None]
) -> int:
    """Embed every unit without embeddings; returns the embedding dimension."""
    if uses_builtin(cfg):
        return DIM
    pending = [i for i in range(n_units) if not chunks.embedding_path(work, i).exists()]
    embedder = make_embedder(cfg)
    for i in pending:
        records = [r for r in chunks.read_unit(work, i) if "reason" not in r]
        images = [Image.open(io.BytesIO(chunks.read_image(work, i, r))) for r in records]
        rows = embedder(images) if images else np.zeros((0, embedder.dim), np.float32)
        chunks.write_embeddings(work, i, rows)
        on_done(len(records))
    return embedder.dim
