"""infmix: builds grayscale infrared pre-training corpora as deterministic WebDataset shards."""

__version__ = "0.1.0"
