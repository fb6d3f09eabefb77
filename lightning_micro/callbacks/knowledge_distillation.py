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

from lightning_micro.artifact.format import ARTIFACT_NAME, load_compressed
from lightning_micro.artifact.trust import Trusted, UntrustedSpecError, resolve
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.contract import CompressionMixin, compressed_net, recorded_module_class
from lightning_micro.core.distillation import distillation_term


def load_teacher(path: str | Path, trusted: Iterable[Trusted] = (), module_class: type | None = None) -> nn.Module:
    """The network stored at ``path``: an artifact (``.safetensors``, or a run directory holding
    ``model.safetensors``) or a Lightning checkpoint (``.ckpt``) of a LightningModule of class ``module_class``,
    read as data only, in eval mode with gradients off. Of a checkpoint's module, the network is its
    ``compressed_net`` (the contract's) or the whole module.

    Raises:
        ValueError: no such file, one that is neither, or a checkpoint without ``module_class``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ARTIFACT_NAME
    if not path.is_file():
        raise ValueError(f"teacher: no file at {path} (give an artifact, a run directory holding model.safetensors, "
                         "or a .ckpt checkpoint of a run)")
    if path.suffix == ".ckpt":
        if module_class is None:
            raise ValueError(f"teacher: {path} is a checkpoint; name the LightningModule class that wrote it "
                             "(teacher_class)")
        # The mixin's load_from_checkpoint reads hyper-parameters under `trusted`; any other class as weights only.
        kwargs = {"trusted": trusted} if issubclass(module_class, CompressionMixin) else {"weights_only": True}
        net = compressed_net(module_class.load_from_checkpoint(path, map_location="cpu", **kwargs))
    elif path.suffix == ".safetensors":
        net = load_compressed(path, trusted=trusted)
    else:
        raise ValueError(f"teacher: {path} is neither an artifact (.safetensors) nor a checkpoint (.ckpt)")
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net


def _is_checkpoint(path: str) -> bool:
    return Path(path).suffix == ".ckpt" and Path(path).is_file()


class KnowledgeDistillation(CompressionTechnique):
    """Add ``alpha * (T^2 KL(teacher_T || student_T) - CE(student, y))`` to the training loss, so that a module whose
    task loss is the cross-entropy trains on ``(1 - alpha) CE + alpha T^2 KL``: the student (the network being
    compressed, with whatever other techniques the run has) learns the teacher's softened outputs beside the labels.

    The teacher (``teacher``: an artifact, a run directory or a checkpoint of a dense recipe's run) is loaded as
    data only (a checkpoint through ``teacher_class``, by default the student's own LightningModule class). It
    runs in eval mode without gradients on the student's device, and is not part of the module (nor of its
    checkpoints). Its forward time is in the report beside the fit's (``distill/teacher_s``,
    ``distill/teacher_share``). The term needs the batch (``(input, target)``) and, when the module passes them,
    the student's outputs (``self.compression_loss(batch=batch, outputs=logits)``); otherwise it runs the network
    again on the batch.

    Args:
        teacher: path of the teacher's artifact (``.safetensors``), run directory or checkpoint (``.ckpt``).
        alpha: weight of the distillation term, in [0, 1] (0: labels only; 1: the teacher only).
        temperature: softening temperature T > 0 of both outputs.
        trusted: classes (or paths) the teacher's file may name beyond the zoo (``lightning_micro.artifact.trust``).
        teacher_class: dotted path of the LightningModule class that reads a ``.ckpt`` teacher (``None``: the
            student's own class). It must be trusted as every class a file names is: in ``trusted`` or
            registered with ``lightning_micro.trust``.

    Raises:
        ValueError: an argument outside its allowed values, a missing teacher file, or a teacher whose outputs
            differ in number from the network's (named in the message).
    """

    technique = "KnowledgeDistillation"
    family = "distillation"
    changes_structure = False

    def __init__(self, teacher: str | None = None, alpha: float = 0.5, temperature: float = 4.0,
                 trusted: Iterable[Trusted] = (), teacher_class: str | None = None) -> None:
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
        if teacher_class is not None and (not isinstance(teacher_class, str) or not teacher_class):
            raise ValueError(f"teacher_class must be the dotted path of a LightningModule class, got {teacher_class!r}")
        self.teacher_class = teacher_class
        self.student_class: type | None = None  # the student's LightningModule class, known from setup on
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
        module_class = self._module_class()
        if module_class is None and _is_checkpoint(self.teacher):
            return  # read with the student's own class, known in setup
        self.net = load_teacher(self.teacher, self.trusted, module_class)
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

    def _module_class(self) -> type | None:
        """The class that reads a checkpoint teacher: ``teacher_class``, else the student's, else (before the
        student is known) the class the checkpoint records as its writer, when that class is trusted."""
        if self.teacher_class is not None:
            name, key = self.teacher_class, "teacher_class"
        elif self.student_class is not None:
            return self.student_class
        elif _is_checkpoint(self.teacher):
            name, key = recorded_module_class(self.teacher), f"teacher {self.teacher} (the class that wrote it)"
            if name is None:
                return None
        else:
            return None
        try:
            return resolve(name, key, self.trusted)
        except UntrustedSpecError as err:
            raise ValueError(str(err)) from None

    @override
    def selection_resolved(self) -> bool:
        return self.net is not None

    @override
    def select_on(self, pl_module: L.LightningModule) -> None:
        self.student_class = type(pl_module)  # reads a .ckpt teacher unless teacher_class names another
        super().select_on(pl_module)

    @override
    def initialize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
