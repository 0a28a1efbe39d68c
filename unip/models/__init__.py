"""Teachers (plain timm ViTs from names or published checkpoints) and the UNIP students.

Importing this package registers `unip_vit_{tiny,small,base}_patch16` with timm.
"""

from unip.models.checkpoints import load_vit, parse_spec
from unip.models.student import STUDENTS, UnipViT, create_student
from unip.models.teacher import Teacher, create_teacher, qk_logits

__all__ = [
    "STUDENTS",
    "Teacher",
    "UnipViT",
    "create_student",
    "create_teacher",
    "load_vit",
    "parse_spec",
    "qk_logits",
]
