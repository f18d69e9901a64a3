"""vidconv-deploy: take VidConv (ViC) video models to FPGAs and edge accelerators."""

from vidconv_deploy.checkpoints import LoadReport, load_checkpoint, load_model, save_checkpoint
from vidconv_deploy.errors import CheckpointError, UserError
from vidconv_deploy.models import VidConv, ViCConfig, build_model
from vidconv_deploy.version import __version__

__all__ = [
    "__version__",
    "CheckpointError",
    "LoadReport",
    "UserError",
    "ViCConfig",
    "VidConv",
    "build_model",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
