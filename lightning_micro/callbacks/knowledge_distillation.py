"""KnowledgeDistillation: a trained teacher's softened outputs added to the training loss while another technique
compresses the network (Hinton et al. 2015).

The Lightning glue only: the loss itself is :func:`lightning_micro.core.distillation.distillation_term`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.core.distillation import distillation_term
from lightning_micro.loading import Trusted


def load_teacher(path: str | Path, trusted: Iterable[Trusted] = ()) -> nn.Module:
    """The network stored at ``path``: an artifact (``.safetensors``, or a run directory holding
    ``model.safetensors``) or a Lightning checkpoint of the zoo's ``ClassifierModule`` (``.ckpt``), read as data only,
    in eval mode with gradients off.

    Raises:
        ValueError: no such file, or one that is neither.
    """
    from lightning_micro.export import load_compressed
    from lightning_micro.models import ClassifierModule

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"teacher: no file at {path} (give an artifact, a run directory holding model.safetensors, "
                         "or a .ckpt checkpoint of a run)")
    if path.suffix == ".ckpt":
        net = ClassifierModule.load_from_checkpoint(path, map_location="cpu", trusted=trusted).net
    elif path.suffix == ".safetensors":
        net = load_compressed(path, trusted=trusted)
    else:
        raise ValueError(f"teacher: {path} is neither an artifact (.safetensors) nor a checkpoint (.ckpt)")
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net


class KnowledgeDistillation(CompressionTechnique):
    """Add ``alpha * (T^2 KL(teacher_T || student_T) - CE(student, y))`` to the training loss, so that a module whose
    task loss is the cross-entropy trains on ``(1 - alpha) CE + alpha T^2 KL``: the student (the network being
    compressed, with whatever other techniques the run has) learns the teacher's softened outputs beside the labels.

    The teacher (``teacher``: an artifact, a run directory or a checkpoint of a dense recipe's run) is loaded as
    data only, runs in eval mode without gradients on the student's device, and is not part of the module (nor of
    its checkpoints). Its forward time is in the report beside the fit's (``distill/teacher_s``,
    ``distill/teacher_share``). The term needs the batch (``(input, target)``) and, when the module passes them,
    the student's outputs (``self.compression_loss(batch=batch, outputs=logits)``); otherwise it runs the network
    again on the batch.

    Args:
        teacher: path of the teacher's artifact (``.safetensors``), run directory or checkpoint (``.ckpt``).
        alpha: weight of the distillation term, in [0, 1] (0: labels only; 1: the teacher only).
        temperature: softening temperature T > 0 of both outputs.
        trusted: classes (or paths) the teacher's file may name beyond the zoo (``lightning_micro.loading``).

    Raises:
        ValueError: an argument outside its allowed values, a missing teacher file, or a teacher whose outputs
            differ in number from the network's (named in the message).
    """

    technique = "KnowledgeDistillation"
    changes_structure = False

    def __init__(self, teacher: str | None = None, alpha: float = 0.5, temperature: float = 4.0,
                 trusted: Iterable[Trusted] = ()) -> None:
        super().__init__()
        if teacher is not None and (not isinstance(teacher, (str, Path)) or not str(teacher)):
            raise ValueError(f"teacher must be the path of a trained run's artifact, run directory or checkpoint, "
                             f"got {teacher!r}")
        self.teacher = None if teacher is None else str(teacher)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.trusted = list(trusted)
        self.net: nn.Module | None = None  # the teacher network (loaded by check_model)
        self.teacher_seconds = 0.0
        self.fit_seconds = 0.0
        self._fit_started: float | None = None

    @override
    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Load the teacher and check that its outputs match the network's in number."""
        if self.teacher is None:
            raise ValueError("teacher is not set: give the path of a trained run's artifact, run directory or "
                             "checkpoint (e.g. compression.distill.teacher=logs/runs/<dense run>)")
        self.net = load_teacher(self.teacher, self.trusted)
        if example_input is None:
            return
        with torch.no_grad():
            was_training = net.training
            net.eval()
            try:
                student = net(example_input)
            finally:
                net.train(was_training)
            teacher = self.net(example_input.cpu())
        if teacher.shape[1:] != student.shape[1:]:
            raise ValueError(f"teacher: {self.teacher} gives {list(teacher.shape[1:])} outputs per input, the network "
                             f"{list(student.shape[1:])}: distill from a teacher trained on the same classes")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.net is None:
            self.check_model(self.net_of(pl_module), getattr(pl_module, "example_input_array", None))
        super().setup(trainer, pl_module, stage)
        self.add_loss_term(pl_module, "distill/kd", self._term)
        rank_zero_info(f"KnowledgeDistillation: teacher {self.teacher} ({type(self.net).__name__}), "
                       f"alpha={self.alpha}, T={self.temperature}")

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.net.to(pl_module.device).eval()
        self._fit_started = time.perf_counter()

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fit_started is not None:
            self.fit_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None

    def _term(self, module: L.LightningModule, batch: Any = None, outputs: torch.Tensor | None = None,
              **context: Any) -> torch.Tensor:
        if batch is None:
            raise RuntimeError("KnowledgeDistillation needs the batch: call self.compression_loss(batch=batch) in "
                               "training_step")
        inputs, targets = batch[0], batch[1]
        student = outputs if outputs is not None else self.net_of(module)(inputs)
        started = time.perf_counter()
        self.net.eval()
        with torch.no_grad():
            teacher = self.net(inputs)
        self.teacher_seconds += time.perf_counter() - started
        return distillation_term(student, teacher, targets, self.alpha, self.temperature)

    @override
    def report_fields(self, net: nn.Module) -> dict[str, int | float | str]:
        """The teacher, alpha and T, and the teacher's forward time against the fit's."""
        return {"distill/teacher": self.teacher, "distill/alpha": self.alpha, "distill/temperature": self.temperature,
                "distill/teacher_s": self.teacher_seconds, "distill/fit_s": self.fit_seconds,
                "distill/teacher_share": self.teacher_seconds / self.fit_seconds if self.fit_seconds else 0.0}
