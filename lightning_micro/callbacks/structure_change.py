"""Changing a network's structure during a fit: the Lightning side of :mod:`lightning_micro.core.transforms`.

:func:`change_structure` is the one way a technique changes the network: it applies a registered transform to
the module's network (recorded, so checkpoints and the artifact replay it), rebuilds what was built for the old
parameters when the fit is under way (:func:`transform_during_fit`), then tells every technique of the run
(``on_structure_change``) so that each re-resolves its selection by layer name.

:func:`transform_during_fit` rebuilds the optimizers and their schedulers (through ``configure_optimizers``, as
Lightning does at the start of fit, so a resumed run builds the same ones) and the DDP wrapper. Optimizer state
(momentum, Adam moments) and per-group hyper-parameters carry over to the parameters that keep their name and
shape, or that a transform slices (:data:`~lightning_micro.core.transforms.PARAMETER_SLICES`: channel removal),
sliced the same way; schedulers keep their position.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel

from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.core import transforms


def change_structure(trainer: L.Trainer, pl_module: L.LightningModule, transform: str, during_fit: bool,
                     **args: Any) -> None:
    """Apply ``transform`` to the module's network (``during_fit``: between training steps, with the training
    state rebuilt; otherwise in ``setup``, before the optimizer exists) and notify the run's techniques."""
    if during_fit:
        transform_during_fit(trainer, pl_module, transform, **args)
    else:
        pl_module.apply_transform(transform, **args)
    entry = pl_module.transforms[-1]
    for callback in trainer.callbacks:
        if isinstance(callback, CompressionTechnique):
            callback.on_structure_change(trainer, pl_module, entry)


def transform_during_fit(trainer: L.Trainer, pl_module: L.LightningModule, transform: str, **args: Any) -> None:
    """Apply ``transform`` to the module's network between training steps and rebuild the training state around it.

    ``pl_module`` must adopt the compression contract (:class:`lightning_micro.contract.CompressionMixin`).
    """
    names = {id(p): n for n, p in pl_module.named_parameters()}
    old_state = {}
    old_groups = []
    for optimizer in trainer.optimizers:
        for param, state in optimizer.state.items():
            if id(param) in names:
                old_state[names[id(param)]] = (tuple(param.shape), state)
        old_groups.append([{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups])
    old_schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    slicer = transforms.PARAMETER_SLICES.get(transform)
    if slicer is not None:  # parameters keep their names but lose rows or columns: so does their state
        prefix = f"{pl_module.compressed_net_name}." if pl_module.compressed_net_name else ""
        cuts = {prefix + name: dims for name, dims in slicer(pl_module.compressed_net, **args).items()}
        old_state = {name: (_sliced_shape(shape, cuts[name]), _slice_state(state, shape, cuts[name]))
                     if name in cuts else (shape, state) for name, (shape, state) in old_state.items()}

    pl_module.apply_transform(transform, **args)
    pl_module.to(trainer.strategy.root_device)

    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel):  # it holds the old parameters' gradient buckets
        strategy.model = strategy._setup_model(strategy.lightning_module)
    strategy.setup_optimizers(trainer)
    new_params = dict(pl_module.named_parameters())
    for optimizer, groups in zip(trainer.optimizers, old_groups, strict=False):
        for group, old in zip(optimizer.param_groups, groups, strict=False):
            group.update(old)  # the learning rate the schedule had reached, and the rest
        for name, param in new_params.items():
            carried = old_state.get(name)
            if carried is not None and carried[0] == tuple(param.shape) and _owns(optimizer, param):
                optimizer.state[param] = carried[1]
    for config, state in zip(trainer.lr_scheduler_configs, old_schedulers, strict=False):
        config.scheduler.load_state_dict(state)


def _sliced_shape(shape: tuple[int, ...], cuts: list[tuple[int, list[int]]]) -> tuple[int, ...]:
    sizes = list(shape)
    for dim, kept in cuts:
        sizes[dim] = len(kept)
    return tuple(sizes)


def _slice_state(state: dict[str, Any], shape: tuple[int, ...], cuts: list[tuple[int, list[int]]]
                 ) -> dict[str, Any]:
    """A parameter's optimizer state with every tensor shaped like the parameter sliced as the parameter is
    (scalars such as Adam's step count stay)."""
    sliced = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and tuple(value.shape) == shape:
            for dim, kept in cuts:
                value = value.index_select(dim, torch.tensor(kept, dtype=torch.long, device=value.device))
            value = value.contiguous()
        sliced[key] = value
    return sliced


def _owns(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> bool:
    return any(param is p for group in optimizer.param_groups for p in group["params"])
