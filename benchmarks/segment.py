"""Segmentation throughput of UNIP-S + UperNet: a training step, and sliding-window inference with
all of an image's windows in one forward against one window per forward.

Model: `build_segmenter(--layers-variant, "unip_vit_small_patch16", num_classes=21,
img_size=--image-size)`, randomly initialised (nothing is downloaded): UNIP-S, the neck
(LL-FPN by default) and UPerHead + auxiliary FCNHead, as `unip finetune` builds it.

Training: forward + `seg_loss` (decode CE + 0.4 aux CE) + backward + AdamW step (the
fine-tuning's layer-decay parameter groups; fused on CUDA), train mode, on random (B, 3, S, S)
inputs and (B, S, S) int64 labels with ~10% ignored (255) pixels. CPU: fp32 at `--batch-size`.
CUDA (when present and not `--cpu-only`): bf16 autocast at batch 8, reported separately.

Inference: `unip.infer.slide_logits` (crop S, stride round(S * 341 / 512), mmseg's grid) on a
SODA-like S x 1.25S image (512x640 at the default: two windows wide, one high), one image per
call as `unip eval` runs, eval mode under `torch.inference_mode`. Ours forwards all of the
image's windows as one batch (`batch_windows` = number of windows); the baseline, in the same
run on the same model and image, forwards them one at a time (`batch_windows=1`); the ratio is
`ratio_batched_over_single`. Both give the same logits (checked). CUDA: bf16 autocast.

Timing: one warm-up step/call (allocator, cuDNN/oneDNN autotuning) excluded, then the best of
`--rounds` rounds of `--steps` timed steps/calls (`--gpu-steps` on CUDA), CUDA synchronised
around each round. CPU runs with `--threads` torch threads (default: torch's own choice, all
physical cores); the count is reported. Model FLOPs (torch's FLOP counter: matmuls and convs)
per image of a training step (forward + backward) and of one sliding inference are reported
with the achieved TFLOP/s. Prints one JSON line.

    python benchmarks/segment.py [--batch-size 2] [--steps 3] [--rounds 1] [--image-size 512]
        [--layers-variant llfpn|multilayer|linear] [--threads N] [--cpu-only] [--gpu-steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

import unip.models  # noqa: F401  (registers the UNIP students)
from unip.infer import slide_logits, window_grid
from unip.models.seg_optim import layer_decay_groups
from unip.models.segment import build_segmenter, seg_loss

BACKBONE = "unip_vit_small_patch16"
NUM_CLASSES = 21
GPU_BATCH = 8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def amp(device: torch.device):
    """bf16 autocast on CUDA (the recipes' precision there); fp32 on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def build(variant: str, size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmenter(variant, BACKBONE, None, num_classes=NUM_CLASSES, img_size=size).to(
        device
    )


def batch(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)
    y[torch.rand(n, size, size, generator=g) < 0.1] = 255
    return x.to(device), y.to(device)


def best_rate(fn, images_per_call: int, steps: int, rounds: int, device: torch.device) -> float:
    """Images/s: one warm-up call, then the best of `rounds` rounds of `steps` calls."""
    fn()
    sync(device)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        best = max(best, steps * images_per_call / (time.perf_counter() - t0))
    return best


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    groups = layer_decay_groups(
        model, lr=1e-4, weight_decay=0.05, decay_rate=0.85
    )  # the UNIP recipes
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), fused=device.type == "cuda")

    def step() -> None:
        with amp(device):
            losses = seg_loss(model(x), y)
        losses["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train(args, device: torch.device, n: int, steps: int) -> dict:
    model = build(args.layers_variant, args.image_size, device).train()
    x, y = batch(n, args.image_size, device)
    rate = best_rate(train_step(model, x, y, device), n, steps, args.rounds, device)
    # Forward + backward of two images (train-mode BatchNorm after the PPM's 1x1 pool needs
    # more than one), per image.
    with FlopCounterMode(display=False) as fc, amp(device):
        seg_loss(model(x[:2]), y[:2])["loss"].backward()
    model.zero_grad(set_to_none=True)
    flops = fc.get_total_flops() / 2
    return {
        "batch_size": n,
        "steps": steps,
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "train_img_s": round(rate, 3),
        "model_gflops_per_img": round(flops / 1e9, 1),
        "achieved_tflop_s": round(rate * flops / 1e12, 3),
    }


def infer(args, device: torch.device, steps: int) -> dict:
    crop = args.image_size
    stride = round(crop * 341 / 512)
    h, w = crop, round(crop * 640 / 512)
    n_windows = len(window_grid(h, w, crop, stride))
    model = build(args.layers_variant, crop, device).eval()
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)

    def call(bw: int):
        def fn() -> torch.Tensor:
            with torch.inference_mode(), amp(device):
                return slide_logits(model, image, NUM_CLASSES, crop, stride, batch_windows=bw)

        return fn

    ours, base = call(n_windows), call(1)
    # Interleaved rounds, so drift in machine speed hits both alike.
    r_ours = r_base = 0.0
    for _ in range(args.rounds):
        r_base = max(r_base, best_rate(base, 1, steps, 1, device))
        r_ours = max(r_ours, best_rate(ours, 1, steps, 1, device))
    diff = (ours() - base()).abs().max().item()
    with FlopCounterMode(display=False) as fc:
        ours()
    flops = fc.get_total_flops()
    return {
        "image": [h, w],
        "crop": crop,
        "stride": stride,
        "windows_per_image": n_windows,
        "images_per_call": 1,
        "steps": steps,
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "single_window_img_s": round(r_base, 3),
        "batched_windows_img_s": round(r_ours, 3),
        "ratio_batched_over_single": round(r_ours / r_base, 3),
        "max_abs_logit_diff": diff,
        "model_gflops_per_img": round(flops / 1e9, 1),
        "achieved_tflop_s": round(r_ours * flops / 1e12, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=2, help="CPU training batch (>= 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps/calls per round (CPU)")
    ap.add_argument("--gpu-steps", type=int, default=10, help="timed steps/calls per round (CUDA)")
    ap.add_argument("--rounds", type=int, default=1, help="best of this many rounds")
    ap.add_argument("--image-size", type=int, default=512, help="training crop / window side")
    ap.add_argument("--layers-variant", choices=("llfpn", "multilayer", "linear"), default="llfpn")
    ap.add_argument("--threads", type=int, default=None, help="CPU torch threads")
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args()
    if args.image_size % 16 or args.image_size < 32:
        ap.error("--image-size must be a multiple of 16, at least 32")
    if args.batch_size < 2:
        ap.error("--batch-size must be >= 2 (train-mode BatchNorm after the 1x1 pyramid pool)")
    if min(args.steps, args.gpu_steps, args.rounds) < 1:
        ap.error("--steps, --gpu-steps and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    head = "linear-probe" if args.layers_variant == "linear" else f"{args.layers_variant}+uperhead"
    result = {
        "benchmark": "segment",
        "model": f"{BACKBONE}+{head}",
        "num_classes": NUM_CLASSES,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "cpu": {
            "threads": torch.get_num_threads(),
            "machine_cpus": os.cpu_count(),
            "train": train(args, cpu, args.batch_size, args.steps),
            "slide_inference": infer(args, cpu, args.steps),
        },
    }
    if torch.cuda.is_available() and not args.cpu_only:
        cuda = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        result["cuda"] = {
            "device": torch.cuda.get_device_name(),
            "train": train(args, cuda, GPU_BATCH, args.gpu_steps),
            "slide_inference": infer(args, cuda, args.gpu_steps),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
