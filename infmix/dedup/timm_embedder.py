"""`timm:<model-name>` embedder: pooled features of a timm model, batched, on a GPU if present.

torch and timm are imported here only, so the corpus engine stays light when the built-in
descriptor is used. A local checkpoint is loaded with `weights_only=True` and must match the
model: missing or unexpected keys are an error that lists them (the classifier head, unused
for embedding, may be absent or present).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from infmix.errors import InfmixError


def _state_dict(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InfmixError(f"dedup.near.checkpoint: {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class TimmEmbedder:
    def __init__(
        self, model_name: str, checkpoint: Path | None, device: str, batch_size: int
    ) -> None:
        try:
            import timm
            import torch
        except ImportError:
            raise InfmixError(
                "dedup.near.embedder: timm embedders need torch and timm "
                "(pip install 'infmix-unip[embed]')"
            ) from None
        try:
            model = timm.create_model(model_name, pretrained=checkpoint is None, num_classes=0)
        except Exception as e:
            raise InfmixError(f"dedup.near.embedder: cannot create timm model: {e}") from None
        if checkpoint is not None:
            self._load(model, checkpoint)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        cfg = timm.data.resolve_data_config({}, model=model)
        self.size = tuple(cfg["input_size"][1:])
        self.mean = np.asarray(cfg["mean"], np.float32)[:, None, None]
        self.std = np.asarray(cfg["std"], np.float32)[:, None, None]
        self.batch_size = batch_size
        self.dim = int(model.num_features)

    @staticmethod
    def _load(model, checkpoint: Path) -> None:
        state = _state_dict(checkpoint)
        head = model.default_cfg.get("classifier", "head")
        heads = tuple(head) if isinstance(head, (list, tuple)) else (head,)
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        own = model.state_dict()
        missing = [k for k in own if k not in state and not k.startswith(heads)]
        unexpected = [k for k in state if k not in own]
        shapes = [
            f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        if missing or unexpected or shapes:
            raise InfmixError(
                f"dedup.near.checkpoint: {checkpoint} does not match the model: missing keys "
                f"{missing[:10]}, unexpected keys {unexpected[:10]}, wrong shapes {shapes[:10]}"
            )
        model.load_state_dict(state, strict=False)

    def _tensor(self, images: list[Image.Image]):
        import torch

        h, w = self.size
        batch = []
        for im in images:
            a = np.asarray(im.convert("L").resize((w, h), Image.Resampling.BICUBIC), np.float32)
            a = np.repeat(a[None] / 255.0, 3, axis=0)  # grayscale to the 3 channels it expects
            batch.append((a - self.mean) / self.std)
        return torch.from_numpy(np.stack(batch)).to(self.device)

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        out = []
        for s in range(0, len(images), self.batch_size):
            x = self._tensor(images[s : s + self.batch_size])
            with (
                torch.inference_mode(),
                torch.autocast(
                    self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
                ),
            ):
                f = self.model(x).float()
            out.append(torch.nn.functional.normalize(f, dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim))
