"""The loss of quantization-aware fine-tuning of the FINN variant, distilled from a float teacher.

The FINN variant changes the math (BatchNorm, ReLU, integer weights and activations), so it learns
to reproduce its float teacher's logits: KL divergence between temperature-softened distributions
(Hinton et al. 2015, scaled by T^2), plus cross-entropy when the clips come with labels. Brevitas
trains through its quantizers with straight-through estimators; ``vidconv-finetune --qat`` runs it
with the shared training loop after calibrating the student (:func:`vidconv_deploy.finn.model.calibrate`)
so every activation scale starts from data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Distillation temperature.
TEMPERATURE = 2.0


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float = TEMPERATURE) -> torch.Tensor:
    """KL(teacher || student) on softened logits, times T^2, plus cross-entropy on ``labels`` if given."""
    t = temperature
    loss = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
    if labels is not None:
        loss = loss + F.cross_entropy(student, labels)
    return loss
