"""Losses for training from labels and for distilling a hardware variant from the faithful model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillLoss(nn.Module):
    """Hinton KL on temperature-softened logits, a feature loss, and cross-entropy where labels exist.

    The hardware variant (BatchNorm + ReLU) starts from the faithful weights but computes something
    else; matching the teacher's logits and its pooled features pulls it back. ``feature_weight``
    scales the MSE between the two models' pooled features (same width by construction).
    """

    def __init__(self, temperature: float = 2.0, feature_weight: float = 1.0, label_weight: float = 0.5) -> None:
        super().__init__()
        self.temperature = temperature
        self.feature_weight = feature_weight
        self.label_weight = label_weight

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_features: torch.Tensor | None = None,
                teacher_features: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        t = self.temperature
        loss = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
        if student_features is not None and teacher_features is not None and self.feature_weight:
            loss = loss + self.feature_weight * F.mse_loss(student_features, teacher_features)
        if labels is not None and self.label_weight:
            loss = loss + self.label_weight * F.cross_entropy(student_logits, labels)
        return loss
