"""Semantic-segmentation metrics (mIoU, aAcc, mAcc) exactly as mmsegmentation's IoUMetric.

Per-class intersection, union, predicted and labelled areas are summed over the whole split and
only turned into ratios at the end, so mIoU is *not* a mean of per-image IoUs. A class with an
empty union (absent from both predictions and labels) is left out of the mean (NaN-mean), and
pixels labelled `ignore_index` count nowhere, not even in the predicted area.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

COUNTS = ("intersect", "union", "pred", "label")


class SegMetric:
    """Accumulates per-class pixel counts over a split; `compute()` turns them into metrics.

    Args:
        num_classes: K; valid class ids are 0..K-1 (background included, as in mmseg).
        ignore_index: label value whose pixels are dropped before anything is counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class id (K={num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Zero all counts (int64, on CPU until the first update moves them)."""
        self.counts = {name: torch.zeros(self.num_classes, dtype=torch.int64) for name in COUNTS}

    def update(self, pred: Tensor, label: Tensor) -> None:
        """Add one batch of predictions (class ids, any shape) and labels of the same shape.

        Counting happens on the inputs' device (bincount), so a GPU evaluation never copies
        label maps to the host; only K-length count vectors move.
        """
        valid = self._check(pred, label)
        p, y = pred[valid].long(), label[valid].long()
        k = self.num_classes
        area_i = torch.bincount(y[p == y], minlength=k)
        area_p = torch.bincount(p, minlength=k)
        area_y = torch.bincount(y, minlength=k)
        new = {"intersect": area_i, "union": area_p + area_y - area_i, "pred": area_p}
        new["label"] = area_y
        for name in COUNTS:
            self.counts[name] = self.counts[name].to(pred.device) + new[name]

    def _check(self, pred: Tensor, label: Tensor) -> Tensor:
        """Validate the pair and return the mask of counted (non-ignored) pixels."""
        if pred.shape != label.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and label {tuple(label.shape)} must have the same shape"
            )
        if pred.device != label.device:
            raise ValueError(f"pred is on {pred.device} but label is on {label.device}")
        for name, t in (("pred", pred), ("label", label)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
        valid = label != self.ignore_index
        _check_range("label", label[valid], self.num_classes, f" (or {self.ignore_index})")
        _check_range("pred", pred, self.num_classes, "")
        return valid

    def compute(self) -> dict[str, float | list[float]]:
        """Metrics on the 0-100 scale from the counts so far.

        Returns:
            `mIoU`, `mAcc`, `aAcc` as floats; `IoU` and `Acc` as per-class lists with NaN for
            classes that have no union (IoU) or no labelled pixel (Acc). Not rounded (mmseg
            rounds its printed table to 2 decimals).
        """
        c = {name: t.double().cpu() for name, t in self.counts.items()}
        iou = _ratio(c["intersect"], c["union"])
        acc = _ratio(c["intersect"], c["label"])
        total = c["label"].sum()
        a_acc = (c["intersect"].sum() / total).item() * 100 if total > 0 else math.nan
        return {
            "mIoU": torch.nanmean(iou).item(),
            "mAcc": torch.nanmean(acc).item(),
            "aAcc": a_acc,
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
        }

    def state_dict(self) -> dict[str, Tensor]:
        """The four count vectors (CPU copies), enough to resume or merge an evaluation."""
        return {name: t.detach().cpu().clone() for name, t in self.counts.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Replace the counts with those of `state_dict()` output."""
        self.counts = {name: self._checked(state, name).clone() for name in COUNTS}

    def merge(self, other: SegMetric | Mapping[str, Tensor]) -> None:
        """Add another metric's (or state dict's) counts, e.g. from another rank or shard."""
        if isinstance(other, SegMetric):
            if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
                raise ValueError(
                    f"cannot merge SegMetric(K={other.num_classes}, ignore={other.ignore_index}) "
                    f"into SegMetric(K={self.num_classes}, ignore={self.ignore_index})"
                )
            other = other.counts
        for name in COUNTS:
            mine = self.counts[name]
            self.counts[name] = mine + self._checked(other, name).to(mine.device)

    def all_reduce(self) -> None:
        """Sum the counts over all DDP ranks in place; a no-op outside torch.distributed.

        The four vectors travel as one (4, K) tensor: one collective instead of four. With NCCL
        it goes through the current CUDA device even on a rank that saw no batch (counts still
        on CPU), so every rank joins the same collective.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = self.counts["label"].device
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        stacked = torch.stack([self.counts[name].to(device) for name in COUNTS])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        self.counts = dict(zip(COUNTS, stacked.unbind(0), strict=True))

    def _checked(self, state: Mapping[str, Tensor], name: str) -> Tensor:
        t = state[name]
        if t.shape != (self.num_classes,):
            raise ValueError(
                f"count {name!r} has shape {tuple(t.shape)}, want ({self.num_classes},)"
            )
        return t.long()


def _check_range(name: str, values: Tensor, num_classes: int, extra: str) -> None:
    if values.numel() == 0:
        return
    lo, hi = values.min().item(), values.max().item()
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} values must be in [0, {num_classes}){extra}, found min {lo}, max {hi}"
        )


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """100 * num / den per class, NaN where den is 0 (the class is left out of the mean)."""
    out = torch.full_like(num, math.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok] * 100
    return out
