"""timm embedder: images/s on CPU and (when present) CUDA with bf16, and how closely the CUDA
embeddings agree with float32 CPU ones (cosine per image). Random weights saved to a local
checkpoint, so nothing is downloaded. Prints one JSON line.

    python benchmarks/embed.py [--model vit_small_patch16_224] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from infmix.dedup.timm_embedder import TimmEmbedder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray((rng.random((512, 640)) * 255).astype(np.uint8)) for _ in range(16)
    ] * (args.images // 16)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "model.pth"
        torch.save(timm.create_model(args.model, pretrained=False).state_dict(), ckpt)
        result = {"benchmark": "embed", "model": args.model, "images": len(images)}
        embs = {}
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            emb = TimmEmbedder(args.model, ckpt, device, args.batch_size)
            emb(images[: args.batch_size])  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            embs[device] = emb(images)
            result[f"{device}_images_per_s"] = round(len(images) / (time.perf_counter() - t0), 1)
        if "cuda" in embs:
            cos = np.einsum("ij,ij->i", embs["cpu"].astype(np.float64), embs["cuda"])
            result["cuda_vs_cpu_cosine_min"] = round(float(cos.min()), 5)
            result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
