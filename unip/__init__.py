"""unip: attention-pattern analysis, NMI-HAD distillation and segmentation on infmix corpora.

Importing it registers the UNIP students with timm (`timm.create_model("unip_vit_small_patch16")`).
"""

__version__ = "0.1.0"

import unip.models  # noqa: F401  (registers unip_vit_{tiny,small,base}_patch16)
