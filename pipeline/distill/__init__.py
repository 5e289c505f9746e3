"""Distillation of a pathology foundation model into a small ViT (paper §3.1): crops, data, networks, training."""

from pipeline.distill.heads import DINOHead
from pipeline.distill.losses import DINOLoss, IBOTPatchLoss, TokenRegressionLoss

__all__ = ["DINOHead", "DINOLoss", "IBOTPatchLoss", "TokenRegressionLoss"]
