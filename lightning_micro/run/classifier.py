"""ClassifierModule: the LightningModule that trains any image classifier of the zoo (or yours)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_micro.artifact.trust import build, file_trust, trusted
from lightning_micro.contract import TRANSFORMS_KEY, CompressionMixin
from lightning_micro.run.instantiate import ConfigError, described, instantiate, to_plain

__all__ = ["TRANSFORMS_KEY", "ClassifierModule"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _build(value: Any, key: str, partial_ok: bool = False) -> Any:
    """A config node built: with Hydra when it comes from the user's config or code, and only from trusted classes
    with plain arguments when it comes from a checkpoint's hyper-parameters (``load_from_checkpoint``)."""
    if not (isinstance(value, Mapping) or hasattr(value, "_target_")):
        return value
    trusted = file_trust()
    if trusted is None:
        return instantiate(value, key)
    return build(to_plain(value), key, trusted, partial_ok=partial_ok)


def _described(node: Any, key: str) -> str:
    return described(node) if isinstance(node, Mapping) else f"the {key} factory"


def _check_learning_rates(optimizer: torch.optim.Optimizer, key: str) -> None:
    for group in optimizer.param_groups:
        lr = group.get("lr")
        lr = lr.item() if isinstance(lr, torch.Tensor) else lr
        if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr >= 0):
            raise ConfigError(key, f"gives the learning rate {lr}; it must be a finite number >= 0")


@trusted  # the zoo's checkpoints name it (a distillation teacher's, say); its arguments build only trusted nodes
class ClassifierModule(CompressionMixin, L.LightningModule):
    """Cross-entropy classification around a plain ``nn.Module``, with torchmetrics accuracy.

    The network, optimizer and scheduler may be given as config nodes (mappings with ``_target_``; optimizer
    and scheduler with ``_partial_: true``). Nodes are kept as plain hyper-parameters, so a checkpoint rebuilds
    the module with ``ClassifierModule.load_from_checkpoint(path)`` and nothing else. Objects work too (a
    network built in Python, a ``functools.partial`` optimizer); then the checkpoint needs them passed again.

    Everything is checked here, before any training step: the optimizer is built once on the parameters (so a
    negative learning rate fails now, naming ``optimizer``), and one forward pass on zeros of ``input_shape``
    checks that the network takes the data's images and returns ``num_classes`` logits.

    It adopts the compression contract (:class:`~lightning_micro.contract.CompressionMixin`): the network to
    compress is ``net``, and the techniques' loss terms are added to the training loss.

    Logged metrics: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.

    Args:
        net: the network, or its config node.
        optimizer: a callable ``params -> Optimizer``, or its config node.
        scheduler: optional callable ``optimizer -> LRScheduler``, or its config node; stepped every epoch.
        input_shape: ``[C, H, W]`` of one input image.
        num_classes: number of classes.

    Example:
        >>> module = ClassifierModule(
        ...     net={"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]},
        ...     optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        ...     input_shape=[1, 8, 8], num_classes=10)
        >>> module(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | Mapping[str, Any],
        scheduler: Callable[..., Any] | Mapping[str, Any] | None = None,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        objects = [name for name, value in (("net", net), ("optimizer", optimizer), ("scheduler", scheduler))
                   if value is not None and not (isinstance(value, Mapping) or hasattr(value, "_target_"))]
        self.save_hyperparameters(ignore=objects)
        for name in list(self.hparams):  # plain types only: checkpoints load with torch.load(weights_only=True)
            self.hparams[name] = to_plain(self.hparams[name])
        self.input_shape = [int(v) for v in input_shape]
        self.num_classes = int(num_classes)
        self.net: nn.Module = _build(net, "net")
        if not isinstance(self.net, nn.Module):
            raise ConfigError("net", f"must build a torch.nn.Module, got {type(self.net).__name__}")
        self._optimizer_factory: OptimizerFactory = _build(optimizer, "optimizer", partial_ok=True)
        self._scheduler_factory = _build(scheduler, "scheduler", partial_ok=True) if scheduler is not None else None
        self._check_optimizer()
        self._check_shapes()
        self.example_input_array = torch.zeros(1, *self.input_shape)
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")

    compressed_net_name = "net"

    @property
    def net_spec(self) -> dict[str, Any] | None:
        """The network's config node as plain data, or ``None`` when the network was given as an object."""
        spec = self.hparams.get("net")
        return dict(spec) if isinstance(spec, Mapping) else None

    def _check_optimizer(self) -> None:
        """Build the optimizer and the scheduler once on a stand-in parameter and step the scheduler a few times:
        an argument that cannot work (``lr=fast``, ``lr=nan``, ``T_max=0``) fails now, naming its key, instead of
        at the first step or the first epoch's end."""
        stand_in = nn.Parameter(torch.zeros(1))
        try:
            optimizer = self._optimizer_factory([stand_in])
        except (ValueError, TypeError) as err:
            raise ConfigError("optimizer", f"{_described(self.hparams.get('optimizer'), 'optimizer')} rejected its "
                                           f"arguments: {err}") from err
        _check_learning_rates(optimizer, "optimizer")
        if self._scheduler_factory is None:
            return
        try:
            scheduler = self._scheduler_factory(optimizer)
            plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            for _ in range(3):
                optimizer.step()
                scheduler.step(0.0) if plateau else scheduler.step()
                _check_learning_rates(optimizer, "scheduler")
        except ConfigError:
            raise
        except (ValueError, TypeError, ArithmeticError, KeyError, IndexError) as err:
            raise ConfigError("scheduler", f"{_described(self.hparams.get('scheduler'), 'scheduler')} fails on its "
                                           f"first steps: {type(err).__name__}: {err}") from err

    def _check_shapes(self) -> None:
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                out = self.net(torch.zeros(2, *self.input_shape))
        except RuntimeError as err:
            raise ConfigError(
                "net",
                f"{type(self.net).__name__} cannot take images of input_shape {self.input_shape} "
                f"(set from data.input_shape): {str(err).splitlines()[0]}",
            ) from err
        finally:
            self.net.train(was_training)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, self.num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                "net",
                f"{type(self.net).__name__} returned {shape} for a batch of 2, expected (2, {self.num_classes}) "
                "logits (num_classes, set from data.num_classes)",
            )

    def compressed_net_spec(self) -> tuple[dict[str, Any], str]:
        """The network's own config node: the artifact rebuilds the plain network, not this module."""
        if self.net_spec is None:
            raise ValueError("the network was given as an object, so there is no config node to rebuild it from; "
                             "pass net as a config node ({'_target_': ..., plain arguments})")
        return self.net_spec, ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: MulticlassAccuracy):
        images, labels = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, labels)
        if stage == "train":
            loss = loss + self.compression_loss(batch=batch, outputs=logits)
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> Any:
        optimizer = self._optimizer_factory(self.parameters())
        if self._scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._scheduler_factory(optimizer),
                                                         "interval": "epoch"}}
