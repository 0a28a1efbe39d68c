"""`unip train`: NMI-HAD distillation, streaming an infmix corpus, on one device or many.

One process per device (launch several with `torchrun`; DDP over NCCL on GPUs, gloo on CPUs).
Each optimizer step sees `optim.batch_size` images: micro-batches of `data.batch_size` per
device, accumulated. The frozen teacher gives the distilled layer's pre-softmax logits, the
student its last block's, and the loss is the row-wise KL between their softmaxes.

Resume is exact: a checkpoint holds the student, optimizer, scheduler, step and RNG states,
and the data stream of the interrupted epoch is replayed up to where it stopped, so the next
step sees the batch it would have seen.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from unip import checkpoint
from unip.config import RESUMABLE_CHANGES, TrainConfig, differences, dump
from unip.errors import UnipError
from unip.logs import MetricLog
from unip.optim import adamw, scheduler


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg) -> Dist:
    """From torchrun's environment (NCCL where `cfg.device` lets the run use CUDA, gloo
    otherwise); a single process outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return d


def pick_device(cfg: TrainConfig, d: Dist) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UnipError("device: cuda asked, but torch sees no CUDA device")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def autocast(cfg: TrainConfig, device: torch.device):
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if not bf16:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass
class Plan:
    """How the effective batch splits, and the schedule's length in optimizer steps."""

    accumulation: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr: float

    @classmethod
    def of(cls, cfg: TrainConfig, num_samples: int, world: int) -> Plan:
        per_step = cfg.data.batch_size * world
        if cfg.optim.batch_size % per_step:
            raise UnipError(
                f"optim.batch_size {cfg.optim.batch_size} is not a multiple of data.batch_size "
                f"x devices = {cfg.data.batch_size} x {world}"
            )
        steps = max(1, num_samples // cfg.optim.batch_size)
        return cls(
            accumulation=cfg.optim.batch_size // per_step,
            steps_per_epoch=steps,
            total_steps=steps * cfg.optim.epochs,
            warmup_steps=round(cfg.optim.warmup_epochs * steps),
            lr=cfg.optim.base_lr * cfg.optim.batch_size / 256,
        )


def prepare_out(cfg, out: Path, d: Dist, resumable: set[str] = RESUMABLE_CHANGES) -> Path | None:
    """Save the config (refusing a resume under another one); returns the checkpoint to
    resume from, if any. `resumable`: keys a resumed run may change."""
    saved = out / "config.yaml"
    last = checkpoint.latest(out)
    if saved.exists() and last is not None:
        import yaml

        old = yaml.safe_load(saved.read_text())
        changed = [k for k in differences(old, cfg.model_dump(mode="json")) if k not in resumable]
        if changed:
            raise UnipError(
                f"{out} holds a run with another config ({', '.join(changed)} differ); "
                "use another --out to start a new run"
            )
    if d.main:
        checkpoint.remove_temporaries(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_name(".config.yaml.tmp")
        tmp.write_text(dump(cfg))
        os.replace(tmp, saved)
    return last


def build_models(cfg: TrainConfig, image_size: int, device: torch.device):
    import timm

    import unip.models  # noqa: F401  (registers the students)
    from unip.models import create_teacher

    torch.manual_seed(cfg.seed)  # a teacher without weights (the demo) is seeded too
    teacher = create_teacher(
        cfg.teacher.model,
        cfg.teacher.checkpoint,
        cfg.teacher.layer,
        cfg.teacher.pretrained,
        img_size=image_size,
    ).to(device)
    torch.manual_seed(cfg.seed + 1)
    heads = cfg.student.last_heads or teacher.num_heads
    student = timm.create_model(cfg.student.model, last_heads=heads, img_size=image_size)
    if heads != teacher.num_heads:
        raise UnipError(
            f"student.last_heads {heads} must equal the teacher's {teacher.num_heads} heads"
        )
    return teacher, student.to(device)


def train(cfg: TrainConfig, data: Path, out: Path) -> dict:
    """Run (or resume) a distillation; returns the last logged metrics."""
    from unip.data import make_loader, to_model_input
    from unip.loss import attention_kl

    out = Path(out)
    d = init_distributed(cfg)
    device = pick_device(cfg, d)
    plan_samples = corpus_size(data)  # a bad --data fails before --out is made
    plan = Plan.of(cfg, plan_samples, d.world)
    resume = prepare_out(cfg, out, d)
    teacher, student = build_models(cfg, cfg.data.image_size, device)
    freeze_unused(student, cfg.data.image_size, device)
    resolved_config = cfg.model_dump(mode="json")
    resolved_config["student"]["last_heads"] = student.last_heads
    optimizer = adamw(student, plan.lr, cfg.optim.weight_decay, cfg.optim.betas, device)
    sched = scheduler(optimizer, plan.warmup_steps, plan.total_steps, cfg.optim.min_lr / plan.lr)
    step = 0
    if resume is not None:
        state = checkpoint.load(resume)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        checkpoint.set_rng_state(state["rng"])
        if state.get("num_samples", plan_samples) != plan_samples:
            raise UnipError(
                f"{resume} was trained on {state['num_samples']} samples an epoch, --data "
                f"{data} holds {plan_samples}: resume with the same corpus, or use another --out"
            )
    else:
        random.seed(cfg.seed)
    model = DistributedDataParallel(student) if d.world > 1 else student
    forward = torch.compile(model) if cfg.compile else model
    teacher_fwd = torch.compile(teacher) if cfg.compile else teacher
    last_step = min(plan.total_steps, cfg.max_steps or plan.total_steps)
    log = MetricLog(out, d.main, resume_step=step, total=last_step, start=step)
    micro_per_epoch = plan.steps_per_epoch * plan.accumulation

    loader = make_loader(
        data,
        cfg.data.batch_size,
        cfg.data.workers,
        image_size=cfg.data.image_size,
        scale=cfg.data.scale,
        seed=cfg.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        epoch_length=micro_per_epoch * cfg.data.batch_size * d.world,
        rank=d.rank,
        world_size=d.world,
    )

    def batches(epoch: int, skip: int):
        """The epoch's micro-batches from `skip` on; every sample's augmentation is seeded by
        its place in the stream, so a resumed epoch goes on exactly where it stopped."""
        loader.set_epoch(epoch, skip)
        return iter(loader)

    epoch, done_in_epoch = divmod(step, plan.steps_per_epoch)
    stream = batches(epoch, done_in_epoch * plan.accumulation)
    student.train()
    metrics: dict = {}
    t_last, images_since = time.perf_counter(), 0
    while step < last_step:
        loss_sum = 0.0
        for micro in range(plan.accumulation):
            batch = next(stream, None)
            if batch is None:  # the epoch's stream ended early (few samples): next epoch
                epoch += 1
                stream = batches(epoch, 0)
                batch = next(stream)
            x = to_model_input(batch, device)
            sync = micro == plan.accumulation - 1 or d.world == 1
            ctx = nullcontext() if sync else model.no_sync()
            with ctx, autocast(cfg, device):
                with torch.no_grad():
                    t = teacher_fwd(x)
                loss = attention_kl(t, forward(x)) / plan.accumulation
            loss.backward()
            loss_sum += loss.item()
            images_since += x.shape[0] * d.world
        max_norm = cfg.optim.clip_grad or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]
        sched.step()
        step += 1
        log.advance()
        if step % plan.steps_per_epoch == 0:
            epoch += 1
            stream = batches(epoch, 0)
        if d.world > 1:
            t_loss = torch.tensor([loss_sum], device=device)
            dist.all_reduce(t_loss)
            loss_sum = t_loss.item() / d.world
        if step % cfg.log_every == 0 or step == last_step:
            now = time.perf_counter()
            metrics = {
                "step": step,
                "epoch": step / plan.steps_per_epoch,
                "loss": loss_sum,
                "lr": lr,
                "grad_norm": grad_norm,
                "images_per_s": images_since / max(now - t_last, 1e-9),
            }
            log.write(metrics)
            t_last, images_since = now, 0
        if d.main and (step % cfg.checkpoint_every == 0 or step == last_step):
            payload = {
                "model": student.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "rng": checkpoint.rng_state(),
                "num_samples": plan_samples,
                # last_heads resolved (the teacher's when the recipe leaves it out), so export
                # and load_vit rebuild the very architecture that was trained
                "config": resolved_config,
            }
            checkpoint.save(out, step, payload, cfg.keep_last)
        if d.world > 1 and step % cfg.checkpoint_every == 0:
            dist.barrier()
    shutdown(log, d)
    return metrics


def shutdown(log: MetricLog | None, d: Dist) -> None:
    """Close the logs; every rank waits for the last checkpoint (or file), then leaves the
    group."""
    if log is not None:
        log.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def corpus_size(data: Path) -> int:
    """Images per epoch: `_info.json` of an infmix build, else the image files of a folder."""
    from unip.data.streams import list_images

    info = Path(data) / "_info.json"
    if info.is_file():
        return int(json.loads(info.read_text())["splits"]["train"]["num_samples"])
    n = len(list_images(Path(data))) if Path(data).is_dir() else 0
    if n == 0:
        raise UnipError(f"--data {data}: neither an infmix build (_info.json) nor images")
    return n


def freeze_unused(student: torch.nn.Module, image_size: int, device: torch.device) -> list[str]:
    """Parameters the distillation never uses (the last block's value path and MLP, the final
    norm) stop requiring grad: DDP then has nothing to wait for, and AdamW skips them. They
    stay in the model for fine-tuning."""
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    student.zero_grad(set_to_none=True)
    student(x).float().sum().backward()
    unused = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in student.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    return unused
