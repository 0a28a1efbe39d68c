"""Distillation step throughput: our step against a re-creation of the original implementation's.

Ours (unip.train): the teacher runs up to the distilled layer and computes only q and k there;
the student's last block computes only q and k; bf16 autocast on CUDA; fused AdamW; optional
torch.compile. Baseline (as the original code): full blocks up to and including the distilled
layer in both networks (the last block's value path and MLP computed and thrown away), the
distilled logits by a separate explicit matmul on the qkv output caught by a hook, fp16
autocast with a gradient scaler, plain AdamW. Same loss, same shapes, same data.

On the CPU it runs a small config; with CUDA it also runs MAE-L (layer 18) -> ViT-S at batch
256, bf16, and reports images/s and model FLOP utilisation. Prints one JSON line.

    python benchmarks/distill_step.py [--steps 5] [--cpu-only]
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch

import unip.models  # noqa: F401  (registers the students)
from unip.loss import attention_kl
from unip.models import Teacher
from unip.models.teacher import embed_tokens

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core FLOP/s


class HookedLogits(torch.nn.Module):
    """The original pattern: run full blocks, catch the distilled block's qkv output with a
    forward hook, and form q.k^T from it separately."""

    def __init__(self, model, blocks: int):
        super().__init__()
        model.blocks = model.blocks[:blocks]
        self.model, self.caught = model, {}
        attn = model.blocks[-1].attn
        attn.qkv.register_forward_hook(lambda m, i, o: self.caught.__setitem__("qkv", o))
        self.heads, self.scale = attn.num_heads, attn.scale

    def forward(self, x):
        x = embed_tokens(self.model, x)
        for blk in self.model.blocks:
            x = blk(x)  # the last block in full: value path and MLP included
        qkv = self.caught.pop("qkv")
        b, n, _ = qkv.shape
        qkv = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return (qkv[0] @ qkv[1].transpose(-2, -1)) * self.scale


def models(cfg: dict, device):
    teacher = timm.create_model(cfg["teacher"], img_size=cfg["size"], **cfg.get("t_kw", {}))
    student = timm.create_model(
        cfg["student"], last_heads=teacher.blocks[0].attn.num_heads, img_size=cfg["size"]
    )
    return teacher.to(device), student.to(device)


def ours(cfg: dict, device, compile_: bool):
    t, s = models(cfg, device)
    teacher = Teacher(t, cfg["layer"])
    opt = torch.optim.AdamW(s.parameters(), lr=1e-4, fused=device.type == "cuda")
    fs, ft = (torch.compile(s), torch.compile(teacher)) if compile_ else (s, teacher)
    bf16 = device.type == "cuda"

    def step(x):
        ctx = (
            torch.autocast(device.type, torch.bfloat16)
            if bf16
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            loss = attention_kl(ft(x), fs(x))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def baseline(cfg: dict, device):
    t, s = models(cfg, device)
    teacher = HookedLogits(t, cfg["layer"]).eval().requires_grad_(False)
    student = HookedLogits(s, len(s.blocks))
    opt = torch.optim.AdamW(s.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type)

    def step(x):
        with torch.autocast(device.type, dtype=torch.float16):
            with torch.no_grad():
                tl = teacher(x)
            loss = attention_kl(tl, student(x))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def rate(step, x, steps: int, device) -> float:
    step(x)  # warm-up (compilation, allocator, autotuning)
    step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def step_flops(cfg: dict, device) -> float:
    """Model FLOPs of one of our steps per image: teacher forward up to the layer, student
    forward + backward (3x forward), matmuls only, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    t, s = models(cfg, device)
    teacher = Teacher(t, cfg["layer"])
    x = torch.randn(1, 3, cfg["size"], cfg["size"], device=device)
    with FlopCounterMode(display=False) as fc:
        attention_kl(teacher(x), s(x)).backward()
    return float(fc.get_total_flops())


def run(cfg: dict, device, steps: int, compile_: bool) -> dict:
    torch.manual_seed(0)
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], device=device)
    r_ours = rate(ours(cfg, device, compile_), x, steps, device)
    r_base = rate(baseline(cfg, device), x, steps, device)
    out = {
        "config": {k: v for k, v in cfg.items() if k != "t_kw"},
        "ours_img_s": round(r_ours, 1),
        "baseline_img_s": round(r_base, 1),
        "ratio": round(r_ours / r_base, 3),
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        flops = step_flops(cfg, device)
        out.update(device=name, model_tflops_per_img=round(flops / 1e12, 4))
        if peak:
            out["mfu"] = round(r_ours * flops / peak, 4)
        out["target_met"] = r_ours >= 3000 and r_ours >= 1.5 * r_base
    return out


CPU = {
    "teacher": "vit_small_patch16_224",
    "t_kw": {"depth": 6},
    "layer": 5,
    "student": "unip_vit_tiny_patch16",
    "size": 64,
    "batch": 16,
}
GPU = {
    "teacher": "vit_large_patch16_224",
    "layer": 18,
    "student": "unip_vit_small_patch16",
    "size": 224,
    "batch": 256,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile our step (CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="override the GPU batch")
    args = ap.parse_args()
    result = {"benchmark": "distill_step", "cpu": run(CPU, torch.device("cpu"), args.steps, False)}
    result["cpu"]["note"] = (
        "the CPU has no fast fp16: the baseline's fp16 autocast is slow there, so the CPU ratio "
        "overstates the gain; the target is the CUDA figure"
    )
    if torch.cuda.is_available() and not args.cpu_only:
        gpu = dict(GPU, batch=args.batch or GPU["batch"])
        result["cuda"] = run(gpu, torch.device("cuda"), args.steps, args.compile)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
