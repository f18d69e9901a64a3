"""Training, distillation and their resumable state: what makes the demo model and the hardware variants."""

from vidconv_deploy.train.loop import TrainConfig, TrainState, fit
from vidconv_deploy.train.losses import DistillLoss

__all__ = ["DistillLoss", "TrainConfig", "TrainState", "fit"]
