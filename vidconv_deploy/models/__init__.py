"""The VidConv family, faithful to the paper and the authors' code."""

from vidconv_deploy.models.config import ARCHS, ViCConfig, make_config
from vidconv_deploy.models.vidconv import VidConv, build_model

__all__ = ["ARCHS", "ViCConfig", "VidConv", "build_model", "make_config"]
