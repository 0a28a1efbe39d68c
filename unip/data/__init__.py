"""Streaming the corpus into training: augmented uint8 grayscale batches, normalised on the device.

`make_loader` reads an infmix build's WebDataset shards (or a folder of images) and yields
uint8 tensors (B, 1, S, S); `to_model_input` turns them into the (B, 3, S, S) float input of a
ViT on the device, so the CPU never touches a float image.
"""

from unip.data.loader import MEAN, STD, Loader, make_loader, to_model_input

__all__ = ["MEAN", "STD", "Loader", "make_loader", "to_model_input"]
