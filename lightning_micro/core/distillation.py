"""Knowledge distillation's loss (Hinton, Vinyals and Dean 2015): pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch. The ``T^2`` keeps its
    gradients on the scale of the cross-entropy's whatever the temperature."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """What to add to a cross-entropy task loss so that it becomes ``(1 - alpha) CE + alpha T^2 KL``:
    ``alpha (T^2 KL - CE)``."""
    if alpha == 0.0:
        return torch.zeros((), device=student.device, dtype=student.dtype)
    return alpha * (soft_kl(student, teacher.detach(), temperature) - F.cross_entropy(student, targets))
