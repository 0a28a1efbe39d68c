"""`unip finetune`: segmentation fine-tuning or linear probing, iteration-based, on one device
or many (`torchrun`, DDP).

The data order is a seeded permutation per epoch of the training split, and every sample's
augmentation is seeded by its place g in the run's stream, so step s of any rank always sees
the same crops: a resumed run replays nothing and matches an uninterrupted one. Every image
and label of the training and validation splits is read once before training, so a bad file
stops the run before its first step, naming the file.
"""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from unip import checkpoint
from unip.data.loader import to_model_input
from unip.data.segaug import NORM, train_transform
from unip.data.segsets import SegSet, open_segset, read_classes
from unip.errors import UnipError
from unip.evaluate import evaluate
from unip.logs import MetricLog
from unip.segconfig import RESUMABLE_CHANGES, FinetuneConfig
from unip.train import autocast, init_distributed, pick_device, prepare_out, shutdown


def open_split(cfg: FinetuneConfig, root: Path, split: str) -> SegSet:
    classes = cfg.data.classes
    if isinstance(classes, str):
        classes = read_classes(Path(root) / classes)
    return open_segset(cfg.data.kind, Path(root), split, classes, cfg.data.label_map)


class Crops(Dataset):
    """set[(index, g)] -> (uint8 (1, crop, crop) image, int64 label, int64 (rows, cols) before
    padding), augmented by seed g."""

    def __init__(self, segset: SegSet, cfg: FinetuneConfig):
        self.segset, self.cfg = segset, cfg

    def __len__(self) -> int:
        return len(self.segset)

    def __getitem__(self, key: tuple[int, int]):
        index, g = key
        d = self.cfg.data
        rng = np.random.default_rng([self.cfg.seed, g])
        image, label, _ = self.segset[index]
        image, label, size = train_transform(
            image, label, rng, d.crop, d.scale, d.ratio_range, d.cat_max_ratio
        )
        x, y = torch.from_numpy(image.copy())[None], torch.from_numpy(label.astype(np.int64))
        return x, y, torch.tensor(size)


def zero_padding(x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Set the padded bottom/right of normalised images to 0 in place: mmseg pads after
    Normalize (pad_val 0), so padding is 0 in the model's input, not a normalised black.
    `size` is (B, 2) rows and cols before padding."""
    size = size.to(x.device)
    rows = torch.arange(x.shape[-2], device=x.device)[None, :, None] < size[:, 0, None, None]
    cols = torch.arange(x.shape[-1], device=x.device)[None, None, :] < size[:, 1, None, None]
    return x.mul_((rows & cols)[:, None].to(x.dtype))


class StepSampler(Sampler):
    """(index, g) for this rank's samples of steps `start` .. `stop` - 1: step s, rank r, slot
    j reads stream position g = (s x world + r) x batch + j, entry g % n of epoch g // n's
    permutation."""

    def __init__(self, n: int, seed: int, batch: int, rank: int, world: int, start: int, stop: int):
        self.n, self.seed, self.batch = n, seed, batch
        self.rank, self.world, self.start, self.stop = rank, world, start, stop

    def __len__(self) -> int:
        return (self.stop - self.start) * self.batch

    def __iter__(self):
        perms: dict[int, list[int]] = {}
        for step in range(self.start, self.stop):
            for j in range(self.batch):
                g = (step * self.world + self.rank) * self.batch + j
                epoch, pos = divmod(g, self.n)
                if epoch not in perms:
                    order = list(range(self.n))
                    random.Random(f"seg:{self.seed}:{epoch}").shuffle(order)
                    perms = {epoch: order}
                yield perms[epoch][pos], g


def lr_factor(step: int, cfg: FinetuneConfig, base_lr: float | None = None) -> float:
    """mmcv's poly schedule with linear warmup, as a multiple of a group's peak lr `base_lr`
    (default optim.lr): (base - min_lr) x (1 - step/iters)^power + min_lr, min_lr absolute."""
    o = cfg.optim
    min_ratio = o.min_lr / (o.lr if base_lr is None else base_lr)
    poly = (1 - min_ratio) * (1 - step / o.iterations) ** o.power + min_ratio
    if step < o.warmup_iters:
        return poly * (1 - (1 - step / o.warmup_iters) * (1 - o.warmup_ratio))
    return poly


def check_readable(segset: SegSet, workers: int) -> None:
    """Read every image and label once: a bad file fails here, named, not mid-run."""
    loader = DataLoader(_Check(segset), batch_size=None, num_workers=min(workers, 4))
    bad = [msg for msg in loader if msg]
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UnipError(
            f"{len(bad)} unreadable samples in {segset.split}: {'; '.join(bad[:5])}{more}"
        )


class _Check(Dataset):
    def __init__(self, segset: SegSet):
        self.segset = segset

    def __len__(self) -> int:
        return len(self.segset)

    def __getitem__(self, i: int) -> str:
        try:
            self.segset[i]
        except Exception as exn:  # reported together, before training
            return f"{self.segset.names[i]}: {exn}"
        return ""


def build_model(cfg: FinetuneConfig, num_classes: int, arch: dict | None = None) -> torch.nn.Module:
    """The run's segmenter: backbone from model.backbone / model.checkpoint, or, with `arch`
    (a fine-tuning checkpoint's backbone_arch), that architecture with no weights read."""
    from unip.models.checkpoints import check_arch
    from unip.models.segment import build_segmenter

    torch.manual_seed(cfg.seed)
    m = cfg.model
    weights = m.checkpoint if arch is None else None
    if weights is not None and weights.is_dir():  # a `unip train` run folder: its last step
        weights = checkpoint.latest(weights)
        if weights is None:
            raise UnipError(f"model.checkpoint {m.checkpoint}: a folder without checkpoints/")
    model = build_segmenter(
        m.kind, m.backbone, weights, num_classes, cfg.data.crop, m.drop_path_rate, m.aux,
        arch=arch,
    )  # fmt: skip
    check_arch(model.backbone.arch)  # what `unip eval` will rebuild it from: refused now, not then
    return model


def make_optimizer(cfg: FinetuneConfig, model: torch.nn.Module, device: torch.device):
    from unip.models.seg_optim import layer_decay_groups

    o = cfg.optim
    groups = layer_decay_groups(model, o.lr, o.weight_decay, o.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, fused=device.type == "cuda")
    lambdas = [partial(lr_factor, cfg=cfg, base_lr=g["lr"]) for g in optimizer.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return optimizer, sched


def check_batch(cfg: FinetuneConfig, world: int, sync_bn: bool) -> None:
    """UperNet's pyramid pooling has BatchNorm on 1x1 maps: one image per BatchNorm batch
    cannot be normalised, so say so before the run rather than fail in step 1."""
    per_bn = cfg.data.batch_size * (world if sync_bn else 1)
    if cfg.model.kind != "linear" and per_bn < 2:
        raise UnipError(
            f"data.batch_size={cfg.data.batch_size}: the UperNet head's BatchNorm needs at "
            "least 2 images per step on each device (or SyncBatchNorm across GPUs)"
        )


def finetune(cfg: FinetuneConfig, data: Path, out: Path) -> dict:
    """Run (or resume) a fine-tuning; returns the last evaluation's metrics."""
    from unip.models.segment import seg_loss

    out = Path(out)
    d = init_distributed(cfg)
    device = pick_device(cfg, d)
    train_set = open_split(cfg, data, cfg.data.train_split)
    val_set = open_split(cfg, data, cfg.data.val_split)
    check_batch(cfg, d.world, sync_bn=d.world > 1 and device.type == "cuda")
    for segset in (train_set, val_set):
        check_readable(segset, cfg.data.workers)
    resume = prepare_out(cfg, out, d, RESUMABLE_CHANGES)
    model = build_model(cfg, len(train_set.classes)).to(device)
    if d.world > 1 and device.type == "cuda":  # (SyncBatchNorm runs on GPUs only)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, sched = make_optimizer(cfg, model, device)
    step, best = 0, -1.0
    if resume is not None:
        state = checkpoint.load(resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best = state["step"], state.get("best_mIoU", -1.0)
        checkpoint.set_rng_state(state["rng"])
    ddp = DistributedDataParallel(model) if d.world > 1 else model
    last = min(cfg.optim.iterations, cfg.max_steps or cfg.optim.iterations)
    b = cfg.data.batch_size
    sampler = StepSampler(len(train_set), cfg.seed, b, d.rank, d.world, step, last)
    loader = DataLoader(
        Crops(train_set, cfg), batch_size=b, sampler=sampler, num_workers=cfg.data.workers,
        pin_memory=device.type == "cuda",
        # its own generator: a loader drawing its base seed from the global RNG would shift
        # the drop-path stream of a resumed run
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    log = MetricLog(out, d.main, resume_step=step, total=last, start=step, label="fine-tuning")
    result: dict = {}
    model.train()
    t_last, images = time.perf_counter(), 0
    for x, y, size in loader:
        x = zero_padding(to_model_input(x, device, *NORM), size)
        y = y.to(device, non_blocking=True)
        with autocast(cfg, device):
            losses = seg_loss(ddp(x), y, avg_non_ignore=cfg.model.avg_non_ignore)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = max(g["lr"] for g in optimizer.param_groups)
        sched.step()
        step += 1
        images += x.shape[0] * d.world
        log.advance()
        if step % cfg.log_every == 0 or step == last:
            now = time.perf_counter()
            row = {k: v.item() for k, v in losses.items()}
            row.update(step=step, lr=lr, images_per_s=images / max(now - t_last, 1e-9))
            log.write(row)
            t_last, images = now, 0
        if step % cfg.eval.every == 0 or step == last:
            for buffer in model.buffers() if d.world > 1 else ():  # rank 0's BN statistics
                dist.broadcast(buffer, 0)
            result = evaluate(model, val_set, cfg, device, d, out if step == last else None)
            model.train()
            log.write({"step": step, **{f"val/{k}": v for k, v in _scalars(result).items()}})
            if d.main and result["mIoU"] > best:
                best = result["mIoU"]
                checkpoint.write(
                    out / "best.pt", _payload(cfg, model, optimizer, sched, step, best)
                )
        if d.main and (step % cfg.checkpoint_every == 0 or step == last):
            payload = _payload(cfg, model, optimizer, sched, step, best)
            checkpoint.save(out, step, payload, cfg.keep_last)
        if d.world > 1 and step % cfg.checkpoint_every == 0:
            dist.barrier()
    shutdown(log, d)
    return {**result, "step": step, "best_mIoU": best}


def _scalars(result: dict) -> dict:
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}


def _payload(cfg, model, optimizer, sched, step: int, best: float) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "best_mIoU": best,
        "rng": checkpoint.rng_state(),
        "config": cfg.model_dump(mode="json"),
        "backbone_arch": model.backbone.arch,  # `unip eval` rebuilds it without the pre-training
    }
