"""Training logs: `metrics.jsonl` (one JSON object per logged step), TensorBoard, a progress bar.

Only the main process writes. A resumed run first drops the lines logged after the step it
resumes from (they belong to the lost part of the interrupted run), so every step is logged
once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricLog:
    def __init__(
        self,
        out: Path,
        enabled: bool,
        resume_step: int,
        total: int,
        start: int,
        label: str = "distilling",
    ):
        self.enabled = enabled
        self.path = Path(out) / "metrics.jsonl"
        self._tb = self._bar = None
        if not enabled:
            return
        self._truncate(resume_step)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=resume_step + 1)
        self._bar = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task("steps", total=total, completed=start, status="")
        self._bar.start()

    def _truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill while it was written
                continue
            if row.get("step", step + 1) <= step:
                keep.append(line)
        tmp = self.path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")
        for k, v in metrics.items():
            if k != "step" and isinstance(v, (int, float)):
                name = k if "/" in k else f"train/{k}"
                self._tb.add_scalar(name, v, metrics["step"])
        if "loss" not in metrics:  # an evaluation row (val/...): no progress status
            return
        status = f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
        status += f"{metrics['images_per_s']:.0f} img/s"
        self._bar.update(self._task, status=status)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._bar.stop()
