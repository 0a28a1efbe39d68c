"""unip: attention-pattern analysis, NMI-HAD distillation and segmentation on infmix corpora."""

__version__ = "0.1.0"
