"""The compression contract: what a LightningModule offers so that every technique works on it.

A technique that only masks weights (gradual magnitude pruning) works on any LightningModule. Techniques that
change the network's structure (quantization-aware training, TT and low-rank layers) need the module to keep a
*record* of those changes and to replay it before saved weights load, to say which submodule is the network to
compress, to give an example input, and (for techniques that add a loss term) to add the techniques' loss to its
own. :class:`CompressionMixin` is all of that in one line::

    class MyModule(CompressionMixin, L.LightningModule):
        compressed_net_name = "backbone"          # optional: default "" compresses the whole module

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            return loss + self.compression_loss(batch=batch)   # only needed by techniques that add a loss term

:class:`Compressible` is the ``typing.Protocol`` the callbacks check with ``isinstance`` (:func:`require_contract`):
a module that does not adopt the contract gets, before the first training step, one message naming the line to add.
:class:`Technique` is the other side: what the contract needs of a compression callback (its name, for the
checkpoint's record of the run's techniques, and its finalize/codecs, for :func:`export_compressed`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from lightning_micro.artifact.format import save_compressed
from lightning_micro.artifact.trust import Trusted, loading_file
from lightning_micro.core import transforms
from lightning_micro.core.memory_layout import LAYOUTS, choose_layout
from lightning_micro.core.sparse_kernels import Choice, choose_kernels

TRANSFORMS_KEY = "lightning_micro/transforms"  # where checkpoints keep the network's structural record
TECHNIQUES_KEY = "lightning_micro/techniques"  # the run's compression list, by technique, in checkpoints
MODULE_CLASS_KEY = "lightning_micro/module_class"  # the dotted path of the LightningModule that wrote a checkpoint
CONTRACT_LINE = "class {name}(lightning_micro.CompressionMixin, lightning.LightningModule)"

LossTerm = Callable[..., torch.Tensor]


@runtime_checkable
class Compressible(Protocol):
    """What a structure-changing technique needs from the LightningModule (checked with ``isinstance``)."""

    compressed_net_name: str

    @property
    def compressed_net(self) -> nn.Module: ...

    @property
    def transforms(self) -> transforms.Record: ...

    def apply_transform(self, transform: str, **args: Any) -> nn.Module: ...

    def add_loss_term(self, name: str, term: LossTerm) -> None: ...

    def compression_loss(self, **context: Any) -> torch.Tensor: ...

    def compressed_net_spec(self) -> tuple[dict[str, Any], str]: ...


@runtime_checkable
class Technique(Protocol):
    """What the contract needs of a compression callback (:class:`~lightning_micro.callbacks.technique.
    CompressionTechnique` is the base that provides it): its name, and its deployable form and codecs."""

    technique: str

    def finalize(self, pl_module: Any) -> None: ...

    def export_codecs(self, net: nn.Module) -> dict[str, str]: ...


def technique_list(callbacks: Iterable[Any]) -> list[str]:
    """The compression techniques among ``callbacks``, by name, in order."""
    return [c.technique for c in callbacks if isinstance(c, Technique)]


def check_same_techniques(checkpoint: Mapping[str, Any], callbacks: Iterable[Any]) -> None:
    """Refuse to resume a checkpoint into a run whose compression list differs from the one that wrote it: the
    state of a technique that is dropped (masks, observer ranges) would be lost, one that is added would start
    from a network it did not see. Checkpoints written before the list was recorded are not checked.

    Raises:
        ValueError: naming both lists.
    """
    saved = checkpoint.get(TECHNIQUES_KEY)
    current = technique_list(callbacks)
    if saved is not None and list(saved) != current:
        raise ValueError(f"the checkpoint was written by a run compressing with {list(saved)}, but this run has "
                         f"{current}; resuming would lose or invent compression state (masks, observer ranges, "
                         "swapped layers). Resume with the same compression list, or start a new run")


class CompressionMixin:
    """The compression contract for a LightningModule; put it first among the bases (see the module docstring).

    Attributes:
        compressed_net_name: dotted name of the submodule that is the network to compress (``""``: the whole
            module). Int8 quantization replaces the network by a traced graph, so it needs a submodule.
    """

    compressed_net_name: str = ""

    # --- the network and its record -----------------------------------------------------------------------------

    @property
    def compressed_net(self) -> nn.Module:
        """The network the techniques compress."""
        return self.get_submodule(self.compressed_net_name) if self.compressed_net_name else self

    @property
    def transforms(self) -> transforms.Record:
        """Structural changes applied to :attr:`compressed_net`, in order (see :mod:`lightning_micro.core.transforms`);
        saved in checkpoints and in the artifact, replayed before saved weights load."""
        return self.__dict__.setdefault("_compression_record", [])

    def apply_transform(self, transform: str, **args: Any) -> nn.Module:
        """Change :attr:`compressed_net` with a registered transform and record it. Parameters the transform
        replaces are new objects: a caller doing this after the optimizer was built must rebuild it (the
        callbacks do, through ``lightning_micro.callbacks.structure_change.transform_during_fit``).

        Raises:
            ValueError: the transform replaces the network object itself (int8 tracing does) while the network is
                the whole LightningModule: name a submodule with ``compressed_net_name``.
        """
        net = self.compressed_net
        new = transforms.apply(net, self.transforms, transform, **args)
        if new is not net:
            if not self.compressed_net_name:
                self.transforms.pop()
                raise ValueError(f"{transform} replaces the whole network by a new module, which cannot replace the "
                                 f"LightningModule {type(self).__name__} itself: set compressed_net_name to the "
                                 "attribute that holds the network (e.g. compressed_net_name = 'net')")
            transforms.replace_module(self, self.compressed_net_name, new)
        return new

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, trusted: Iterable[Trusted] = (),
                             **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``, reading the file as data only: ``torch.load(weights_only=True)``,
        and network, optimizer and scheduler nodes among the saved hyper-parameters are built only from trusted
        classes with plain arguments (:mod:`lightning_micro.artifact.trust`; ``trusted`` names your own)."""
        kwargs.setdefault("weights_only", True)
        with loading_file(trusted):
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODULE_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[TRANSFORMS_KEY] = [dict(entry) for entry in self.transforms]
        trainer = self._fitting_trainer()
        if trainer is not None:  # a dense run records its empty list too
            checkpoint[TECHNIQUES_KEY] = technique_list(trainer.callbacks)
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self._fitting_trainer()
        if trainer is not None:  # resuming a fit (load_from_checkpoint has no trainer)
            check_same_techniques(checkpoint, trainer.callbacks)
        # Lightning calls this before it loads the state dict (on resume and in load_from_checkpoint), so the
        # network gets the structure the saved weights were trained in.
        replay_checkpoint_record(self, checkpoint)
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]

    def _fitting_trainer(self) -> Any:
        trainer = getattr(self, "_trainer", None)
        return trainer if trainer is not None and trainer.state.fn == "fit" else None

    # --- loss terms -------------------------------------------------------------------------------------------

    @property
    def loss_terms(self) -> dict[str, LossTerm]:
        """Loss terms added by techniques, by name: ``term(module, **context) -> scalar tensor``."""
        return self.__dict__.setdefault("_compression_loss_terms", {})

    def add_loss_term(self, name: str, term: LossTerm) -> None:
        """Add (or replace) a technique's term of the training loss; :meth:`compression_loss` sums them."""
        self.loss_terms[name] = term

    def compression_loss(self, **context: Any) -> torch.Tensor:
        """The sum of the techniques' loss terms (zero when there is none); add it to the training loss.
        ``context`` (``batch``, ``outputs``, ...) is passed to every term."""
        self.__dict__["_compression_loss_calls"] = self.__dict__.get("_compression_loss_calls", 0) + 1
        total = torch.zeros((), device=self.device)  # type: ignore[attr-defined]
        for term in self.loss_terms.values():
            total = total + term(self, **context)
        return total

    @property
    def compression_loss_calls(self) -> int:
        """How often :meth:`compression_loss` ran: a technique with a loss term checks that training_step adds it."""
        return self.__dict__.get("_compression_loss_calls", 0)

    # --- export -------------------------------------------------------------------------------------------------

    def compressed_net_spec(self) -> tuple[dict[str, Any], str]:
        """How a fresh process rebuilds :attr:`compressed_net` before the artifact's record and weights are
        applied: a config node (``_target_`` plus plain arguments) and the dotted name of the submodule of the
        object it builds (``""``: the object itself).

        The default rebuilds this LightningModule from its class path and the init arguments it saved with
        ``self.save_hyperparameters()``. Override it to name a factory instead, e.g.
        ``return {"_target_": "my_pkg.make_backbone", "width": 16}, ""``.

        Raises:
            ValueError: the class cannot be imported by name in another process (defined in ``__main__`` or
                inside a function), or an init argument was not saved.
        """
        cls = type(self)
        check_importable(cls)
        hparams = dict(getattr(self, "hparams", {}) or {})
        missing = [name for name, param in inspect.signature(cls.__init__).parameters.items()
                   if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
                   and param.default is param.empty and name not in hparams]
        if missing:
            raise ValueError(f"{cls.__name__}.__init__ needs {missing}, which its hparams do not hold: call "
                             "self.save_hyperparameters() in __init__ (plain values), or override "
                             "compressed_net_spec() to name a factory of the network")
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **hparams}, self.compressed_net_name

    def export_compressed(self, path: str | os.PathLike, sparse_kernels: str = "never",
                          memory_layout: str = "contiguous") -> int:
        """After ``trainer.fit``: write the compressed network to ``path`` and return its size in bytes (see
        :func:`export_compressed`, which this calls with the module's trainer)."""
        return export_compressed(self.trainer, path, self, sparse_kernels,  # type: ignore[attr-defined]
                                 memory_layout=memory_layout)


def recorded_module_class(path: str | os.PathLike) -> str | None:
    """The class path a checkpoint records as the LightningModule that wrote it (read as data only), if any."""
    value = torch.load(path, map_location="cpu", weights_only=True).get(MODULE_CLASS_KEY)
    return value if isinstance(value, str) else None


def replay_checkpoint_record(module: Compressible, checkpoint: Mapping[str, Any]) -> None:
    """Apply the transforms a checkpoint's record holds that ``module`` has not applied yet (structure only)."""
    missing = transforms.remaining(module.transforms, checkpoint.get(TRANSFORMS_KEY, []))
    net = module.compressed_net
    new = transforms.rebuild(net, module.transforms, missing)
    if new is not net:
        transforms.replace_module(module, module.compressed_net_name, new)


def check_importable(cls: type) -> None:
    """Refuse a class that another process cannot import by its path (``__main__``, local classes)."""
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        where = "in __main__ (the script being run)" if cls.__module__ == "__main__" else "inside a function"
        raise ValueError(f"{cls.__qualname__} is defined {where}, so a fresh process cannot import it to rebuild "
                         "the network: move it into an importable module (a .py file on the path)")


def require_contract(pl_module: Any, technique: str) -> Compressible:
    """``pl_module`` as a :class:`Compressible`, or a ``TypeError`` naming the line to add."""
    if isinstance(pl_module, Compressible):
        return pl_module
    name = type(pl_module).__name__
    raise TypeError(f"{technique} changes the network's structure, so the LightningModule must adopt the compression "
                    f"contract; {name} does not. Add the mixin as its first base class: "
                    f"`{CONTRACT_LINE.format(name=name)}` (lightning_micro.CompressionMixin)")


def compressed_net(pl_module: Any) -> nn.Module:
    """The network a technique works on: the contract's :attr:`~CompressionMixin.compressed_net`, or the whole
    module for a LightningModule without the contract (enough for techniques that only mask weights)."""
    return pl_module.compressed_net if isinstance(pl_module, Compressible) else pl_module


def example_input(pl_module: Any, technique: str) -> torch.Tensor:
    """Lightning's ``example_input_array`` of the module (a tensor), or a ``ValueError`` saying how to set it."""
    example = getattr(pl_module, "example_input_array", None)
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"{technique} needs an example input to trace the network: set "
                         f"self.example_input_array = torch.zeros(1, ...) in {type(pl_module).__name__}.__init__ "
                         "(one batch of the network's input shape)")
    return example


def export_compressed(
    trainer: Any,
    path: str | os.PathLike,
    pl_module: Any = None,
    sparse_kernels: str = "never",
    kernel_batch_sizes: Sequence[int] = (1, 64),
    kernel_threads: int = 1,
    memory_layout: str = "contiguous",
) -> int:
    """Write the compressed network of a finished fit as an artifact and return its size in bytes: the one call
    after ``trainer.fit`` for any LightningModule with the compression contract.

    Every compression technique of the trainer is finalized (int8 conversion, integer codes), their codecs are
    gathered (for the keys the network has), and the network is saved with its record of transforms and the spec
    that rebuilds it (:meth:`CompressionMixin.compressed_net_spec`: the module's class path and saved init
    arguments, or a factory it names). :func:`~lightning_micro.artifact.format.load_compressed` rebuilds it in a
    fresh process.

    Args:
        trainer: the ``lightning.Trainer`` that ran the fit (its callbacks are the techniques).
        path: the file to create; an existing file is never overwritten.
        pl_module: the LightningModule (default: ``trainer.lightning_module``).
        sparse_kernels: how pruned ``Linear`` layers compute once loaded: ``never`` (dense, the default: the loaded
            network computes exactly what the trained one does), ``auto`` (dense or CSR, whichever is
            measured faster here for each layer at each of ``kernel_batch_sizes`` with ``kernel_threads`` threads;
            timed on the module's ``example_input_array`` shape; what a Hydra run does) or ``always`` (CSR). The
            choice is recorded in the artifact (:mod:`lightning_micro.core.sparse_kernels`); CSR sums in another
            order, so outputs differ from the dense layer's at float rounding.
        memory_layout: the layout a CNN runs in once loaded: ``contiguous`` (NCHW, the default), ``auto`` (NCHW or
            channels_last, whichever is timed faster here at the largest of ``kernel_batch_sizes``; what a Hydra
            run does; :mod:`lightning_micro.core.memory_layout`) or ``channels_last``. Recorded in the artifact.

    Raises:
        FileExistsError: ``path`` exists.
        ValueError: the module's class cannot be imported by another process (defined in ``__main__``), or its
            init arguments were not saved.
        TypeError: the module does not adopt the compression contract.

    Example:
        >>> import tempfile
        >>> import lightning as L
        >>> from lightning_micro import load_compressed
        >>> from lightning_micro.data import DigitsDataModule
        >>> from lightning_micro.run.classifier import ClassifierModule
        >>> net = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}
        >>> sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
        >>> module = ClassifierModule(net, sgd, input_shape=[1, 8, 8])
        >>> trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(module, DigitsDataModule())
        >>> path = Path(tempfile.mkdtemp()) / "model.safetensors"
        >>> export_compressed(trainer, path) > 0
        True
        >>> type(load_compressed(path)).__name__
        'LeNet300'
    """
    module = require_contract(pl_module if pl_module is not None else trainer.lightning_module, "export_compressed")
    if Path(path).exists():
        raise FileExistsError(f"refusing to overwrite the existing artifact {path}")
    spec, submodule = module.compressed_net_spec()  # refuses __main__ classes before anything is converted
    techniques = [c for c in trainer.callbacks if isinstance(c, Technique)]
    for technique in techniques:
        technique.finalize(module)
    net = module.compressed_net
    state_keys = set(net.state_dict())
    codecs: dict[str, str] = {}
    for technique in techniques:  # later techniques win for a key two of them name
        codecs.update({k: v for k, v in technique.export_codecs(net).items() if k in state_keys})
    kernels = kernel_choice(net, module, sparse_kernels, kernel_batch_sizes, kernel_threads)
    layout = layout_choice(net, module, memory_layout, kernel_batch_sizes, kernel_threads)
    return save_compressed(net, spec, path, codecs, module.transforms, submodule=submodule, kernels=kernels,
                           layout=layout)


def layout_choice(net: nn.Module, module: Any, mode: str, batch_sizes: Sequence[int], threads: int) -> str:
    """The memory layout to record for ``net`` (see :func:`export_compressed`); ``auto`` keeps ``contiguous``
    untimed when the module has no ``example_input_array``."""
    if mode != "auto":
        if mode not in LAYOUTS:
            raise ValueError(f"memory_layout must be one of {['auto', *LAYOUTS]}, got {mode!r}")
        return mode
    example = getattr(module, "example_input_array", None)
    if not isinstance(example, torch.Tensor):
        return "contiguous"
    return choose_layout(net, list(example.shape[1:]), batch_sizes, threads)[0]


def kernel_choice(net: nn.Module, module: Any, mode: str, batch_sizes: Sequence[int], threads: int
                  ) -> Choice:
    """The sparse kernels to record for ``net`` (see :func:`export_compressed`); ``auto`` times nothing and keeps
    every layer dense when the module has no ``example_input_array`` to run the network on."""
    example = getattr(module, "example_input_array", None)
    if mode == "auto" and not isinstance(example, torch.Tensor):
        return {}
    shape = list(example.shape[1:]) if isinstance(example, torch.Tensor) else []
    return choose_kernels(net, shape, batch_sizes, mode, threads)
