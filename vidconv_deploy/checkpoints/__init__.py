"""Checkpoint import (authors' MMAction2, ImageNet ConvNeXt layouts) and our safetensors format."""

from vidconv_deploy.checkpoints.loader import LoadReport, load_checkpoint, load_model, read_checkpoint, save_checkpoint

__all__ = ["LoadReport", "load_checkpoint", "load_model", "read_checkpoint", "save_checkpoint"]
