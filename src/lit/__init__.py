"""Lightning wrappers (training recipe, evaluation protocol); models stay plain PyTorch."""

from .bn import recalibrate_bn
from .module import ClassificationModule, SegmentationModule, StructuredModule, lambda_at
from .optim import build_optimizer, build_scheduler

__all__ = ["ClassificationModule", "SegmentationModule", "StructuredModule", "lambda_at", "recalibrate_bn",
           "build_optimizer", "build_scheduler"]
