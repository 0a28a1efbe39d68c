"""Time `infmix build` against plain Pillow loops on the same generated inputs, one worker.

(a) decode every input with Pillow and nothing else; (b) a plain loop: open -> convert to L ->
JPEG encode -> tarfile; (c) `infmix.build.build` with workers=1 and near-duplicate removal off (the
stages issue 2 defined), once at full resolution and once with the recipe's `max_side`
(pipelines/infmix.yaml); and, for reference, the recipe with `verify_passthrough` (grayscale
JPEGs decoded in full instead of checked structurally) and with near-duplicate removal on.
Prints one JSON line with images/s of each and the ratios; targets: c >= 2x b, c >= 0.8x a.

    python benchmarks/build.py [--n 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from infmix.build import build
from infmix.config import load_config
from infmix.demo import rgb_scene, thermal_frame


def make_inputs(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        ir = (thermal_frame(rng, 512, 640) * 255).astype(np.uint8)
        p = root / "ir" / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ir).save(p, quality=90)
        rgb = np.asarray(Image.fromarray(rgb_scene(rng, 180, 320)).resize((1280, 720)))
        noisy = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
        p2 = root / "rgb" / f"{i:05d}.jpg"
        p2.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(p2, quality=90)
        paths += [p, p2]
    return sorted(paths)


def decode_only(paths: list[Path], _out: Path) -> None:
    for p in paths:
        with Image.open(p) as im:
            im.load()


def plain_loop(paths: list[Path], out: Path) -> None:
    with tarfile.open(out / "plain.tar", "w") as tar:
        for i, p in enumerate(paths):
            with Image.open(p) as im:
                buf = io.BytesIO()
                im.convert("L").save(buf, "JPEG", quality=95)
            info = tarfile.TarInfo(f"{i:08d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)


def infmix_build(root: Path, max_side: int | None, near: bool = False, verify: bool = False):
    data = {
        "data_root": str(root),
        "sources": [
            {"name": "ir", "kind": "folder", "root": "ir", "modality": "infrared"},
            {"name": "rgb", "kind": "folder", "root": "rgb", "modality": "rgb"},
        ],
        "process": {"max_side": max_side, "jpeg_quality": 95, "verify_passthrough": verify},
        "dedup": {"near": {"enabled": near}},
    }
    cfg = load_config(None, data=data)

    def run(paths: list[Path], out: Path) -> None:
        stats = build(cfg, out / "corpus", workers=1, overwrite=True)
        t = stats["total"]
        assert t["seen"] == len(paths) and (near or t["kept"] == len(paths)), t

    return run


def best_rates(fns: dict, paths: list[Path], repeat: int) -> dict[str, float]:
    """Images/s of each function, best of `repeat` rounds run interleaved, so that drift in
    the machine's speed hits every contender alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                fn(paths, Path(d))
                best[name] = min(best[name], time.perf_counter() - t0)
    return {name: len(paths) / t for name, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="images of each kind")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-side", type=int, default=640, help="the recipe's max_side")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="infmix-bench-"))
    try:
        paths = make_inputs(root, args.n)
        fns = {
            "a": decode_only,
            "b": plain_loop,
            "c_full": infmix_build(root, None),
            "c_recipe": infmix_build(root, args.max_side),
            "c_recipe_verify": infmix_build(root, args.max_side, verify=True),
            "c_recipe_near": infmix_build(root, args.max_side, near=True),
        }
        r = best_rates(fns, paths, args.repeat)
        a, b, c_full, c_recipe = r["a"], r["b"], r["c_full"], r["c_recipe"]
        c_near, c_verify = r["c_recipe_near"], r["c_recipe_verify"]
    finally:
        shutil.rmtree(root)
    print(
        json.dumps(
            {
                "benchmark": "build",
                "images": len(paths),
                "workers": 1,
                "a_decode_only_img_s": round(a, 1),
                "b_plain_loop_img_s": round(b, 1),
                "c_infmix_full_res_img_s": round(c_full, 1),
                "c_infmix_max_side_img_s": round(c_recipe, 1),
                "max_side": args.max_side,
                "c_infmix_max_side_verify_passthrough_img_s": round(c_verify, 1),
                "c_infmix_max_side_with_near_dedup_img_s": round(c_near, 1),
                "ratio_c_full_over_b": round(c_full / b, 3),
                "ratio_c_full_over_a": round(c_full / a, 3),
                "ratio_c_max_side_over_b": round(c_recipe / b, 3),
                "ratio_c_max_side_over_a": round(c_recipe / a, 3),
                "target_met_max_side": c_recipe >= 2 * b and c_recipe >= 0.8 * a,
                "target_met_full_res": c_full >= 2 * b and c_full >= 0.8 * a,
            }
        )
    )


if __name__ == "__main__":
    main()
