"""GradualMagnitudePruning: connection-level pruning during training (Zhu & Gupta 2017).

The Lightning glue only: schedules, selection and masks live in :mod:`lightning_micro.core`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.argument_checks import check_count, check_window, follow_selection, read_overrides
from lightning_micro.callbacks.argument_checks import check_fraction as _check_fraction
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.core.masks import apply_masks_, floor_count, magnitude_masks, mask_optimizer_state_
from lightning_micro.core.schedules import SPARSITY_SCHEDULES
from lightning_micro.core.selection import check_pattern, name_matches, select_parameters
from lightning_micro.report.measure import sparsity as measured_sparsity

# TTLinear: its cores (``prunable_parameters``), so a TT layer swapped in mid-run is pruned like the Linear it replaced.
DEFAULT_MODULE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "TTLinear")
# Optimizers whose update of a weight is zero when its gradient and its state are zero (weight decay included:
# it scales the weight, which is zero). With masked gradients and zeroed state, pruned weights of these stay zero
# without masking the weights again after every step; any other optimizer gets that extra pass.
ZERO_PRESERVING_OPTIMIZERS = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad,
    torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam,
)


class GradualMagnitudePruning(CompressionTechnique):
    """Prune the smallest-magnitude weights gradually while training, then keep the masks fixed and retrain.

    Every ``update_every`` optimizer steps between ``start`` and ``end`` the target sparsity follows the
    schedule (``cubic``: Zhu & Gupta's ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3``), and masks are
    recomputed from the weights' magnitudes. Pruned weights are zero after every optimizer step: their gradients
    are masked before the step and their optimizer state (momentum, Adam moments) is zeroed when they are pruned,
    so the step leaves them at zero; with an optimizer outside :data:`ZERO_PRESERVING_OPTIMIZERS` the weights are
    also masked again after every step. After ``end`` the masks stay fixed: the retraining phase.

    Works on any LightningModule (the compression contract is optional: without it the whole module is the
    network). When another technique of the run changes the network's structure, the selection follows the
    layers by name: a TT layer's cores or a low-rank layer's factors replace the weight they were made from, and
    are pruned to the current target at the next step.

    Args:
        final_sparsity: fraction of the selected weights that is zero at the end, in [0, 1).
        initial_sparsity: sparsity at ``start`` (Zhu & Gupta's ``s_i``), in [0, final_sparsity].
        start: when pruning starts: an epoch (int), a fraction of the whole run (float in [0, 1]) or an
            optimizer step (``"step:N"``).
        end: when the final sparsity is reached, same units; not before ``start``.
        update_every: optimizer steps between mask updates (>= 1).
        schedule: ``cubic``, ``linear`` or ``one_shot``.
        scope: ``global`` ranks all selected weights together, ``layerwise`` prunes each tensor to the target.
        min_layer_density: under ``global``, the fraction of each tensor's weights that is always kept (at least
            one weight; ``0`` turns the floor off): global ranking can otherwise prune a small layer whole and
            leave a dead network. Tensors held at their floor are reported (``gmp/floored_tensors``).
        include: name patterns (glob, or regex with ``re:``) of parameters to prune, relative to the network.
        exclude: name patterns to leave dense.
        module_types: class names of the modules whose ``weight`` is pruned (never biases or norms).
        overrides: ``{pattern: final sparsity}`` for layers pruned alone to their own target, or the path of a YAML
            file holding them under ``overrides:`` (what ``lightning-micro-sensitivity`` writes).
        first_layer_sparsity: final sparsity of the first selected layer alone (``None``: no special case).
        last_layer_sparsity: same for the last selected layer (e.g. keep the classifier denser).
        log_layers: also log each layer's sparsity at every update.

    Raises:
        ValueError: an argument outside its allowed values (named in the message).

    Example:
        >>> pruning = GradualMagnitudePruning(final_sparsity=0.9, start=0, end=0.5, update_every=50)
        >>> pruning.end, GradualMagnitudePruning().end  # the defaults are conf/compression/gmp.yaml's
        (0.5, 0.6)
        >>> trainer = L.Trainer(callbacks=[pruning])
    """

    technique = "GradualMagnitudePruning"
    family = "connection_pruning"
    when_arguments = ("start", "end")

    def __init__(
        self,
        final_sparsity: float = 0.9,
        initial_sparsity: float = 0.0,
        start: int | float | str = 0,
        end: int | float | str = 0.6,
        update_every: int = 25,
        schedule: str = "cubic",
        scope: str = "global",
        min_layer_density: float = 0.01,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        module_types: Sequence[str] = DEFAULT_MODULE_TYPES,
        overrides: Mapping[str, float] | str | None = None,
        first_layer_sparsity: float | None = None,
        last_layer_sparsity: float | None = None,
        log_layers: bool = True,
    ) -> None:
        super().__init__()
        self.final_sparsity = _check_fraction("final_sparsity", final_sparsity)
        self.initial_sparsity = _check_fraction("initial_sparsity", initial_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity ({initial_sparsity}) must not exceed final_sparsity ({final_sparsity})")
        self.start, self.end = check_window(start, end)
        self.update_every = check_count("update_every", update_every, " (optimizer steps)")
        if schedule not in SPARSITY_SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SPARSITY_SCHEDULES)}, got {schedule!r}")
        self.schedule = schedule
        if scope not in ("global", "layerwise"):
            raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
        self.scope = scope
        self.min_layer_density = _check_fraction("min_layer_density", min_layer_density)
        self.include = [str(p) for p in ([include] if isinstance(include, str) else include)]
        self.exclude = [str(p) for p in ([exclude] if isinstance(exclude, str) else exclude)]
        if not self.include:
            raise ValueError("include must name at least one pattern (use ['*'] for every layer)")
        self.overrides = {str(k): _check_fraction(f"overrides[{k!r}]", v)
                          for k, v in read_overrides(overrides).items()}
        for name, patterns in (("include", self.include), ("exclude", self.exclude), ("overrides", self.overrides)):
            for pattern in patterns:
                try:
                    check_pattern(pattern)
                except ValueError as err:
                    raise ValueError(f"{name}: {err}") from err
        self.module_types = [str(t) for t in module_types]
        if not self.module_types:
            raise ValueError(f"module_types must name at least one module class, e.g. {list(DEFAULT_MODULE_TYPES)}")
        self.first_layer_sparsity = (
            None if first_layer_sparsity is None else _check_fraction("first_layer_sparsity", first_layer_sparsity)
        )
        self.last_layer_sparsity = (
            None if last_layer_sparsity is None else _check_fraction("last_layer_sparsity", last_layer_sparsity)
        )
        self.log_layers = log_layers

        # Resolved against the network and the trainer in setup / on_train_start.
        self.selected_at_start: list[str] = []  # the selection on the network as configured
        self.names: list[str] = []  # the selection on the network as it is now (followed through swaps)
        self.alone_finals: dict[str, float] = {}
        self.start_step = 0
        self.end_step = 0
        # Saved in checkpoints.
        self.masks: dict[str, torch.Tensor] = {}
        self.last_update_step = -1
        self.target = 0.0
        self._params: list[nn.Parameter] = []
        self._float_masks: list[torch.Tensor] = []
        self._masked: list[nn.Parameter] = []  # the tensors _float_masks apply to
        self._mask_after_step = True
        self._stale = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(final_sparsity=self.final_sparsity, include=tuple(self.include))

    # --- selection -------------------------------------------------------------------------------------------

    @override
    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Resolve the selection on ``net``; raise ``ValueError`` naming the argument when a pattern matches
        nothing. The run calls this before training starts."""
        candidates = select_parameters(net, ["*"], [], self.module_types)
        if not candidates:
            raise ValueError(f"module_types {self.module_types} match no module with a weight in {type(net).__name__}")
        for pattern in self.include + self.exclude + list(self.overrides):
            if not any(name_matches(n, pattern) for n in candidates):
                arg = "include" if pattern in self.include else "exclude" if pattern in self.exclude else "overrides"
                raise ValueError(
                    f"{arg}: pattern {pattern!r} matches no prunable parameter; prunable: {', '.join(candidates)}"
                )
        names = select_parameters(net, self.include, self.exclude, self.module_types)
        if not names:
            raise ValueError(f"include {self.include} minus exclude {self.exclude} leaves nothing to prune")
        self.selected_at_start = names
        self._select(net)

    def _select(self, net: nn.Module) -> None:
        """The selection on ``net`` as it is now (see
        :func:`~lightning_micro.callbacks.argument_checks.follow_selection`)."""
        names = follow_selection(select_parameters(net, ["*"], [], self.module_types), self.include, self.exclude,
                                 self.selected_at_start, module_of=lambda n: n.rpartition(".")[0])
        if not names:
            raise ValueError(f"include {self.include} minus exclude {self.exclude} selects nothing in the network as "
                             "it is now (after a structural change)")
        alone: dict[str, float] = {}  # layers pruned on their own, to their own final sparsity
        if self.first_layer_sparsity is not None:
            alone[names[0]] = self.first_layer_sparsity
        if self.last_layer_sparsity is not None:
            alone[names[-1]] = self.last_layer_sparsity
        for pattern, value in self.overrides.items():
            alone.update({n: value for n in names if name_matches(n, pattern)})
        self.names = names
        self.alone_finals = alone

    # --- schedule --------------------------------------------------------------------------------------------

    def target_at(self, step: int, final: float | None = None) -> float:
        """The scheduled sparsity at optimizer step ``step`` (for a layer whose final sparsity is ``final``)."""
        final = self.final_sparsity if final is None else final
        initial = min(self.initial_sparsity, final)
        return SPARSITY_SCHEDULES[self.schedule](step, initial, final, self.start_step, self.end_step)

    def is_update_step(self, step: int) -> bool:
        if self._stale and step >= self.start_step:  # the network changed under the masks: prune the new tensors
            return True
        if step < self.start_step or step == self.last_update_step:
            return False
        if step >= self.end_step:  # one last update lands exactly on the final sparsity
            return self.last_update_step < self.end_step
        return (step - self.start_step) % self.update_every == 0

    # --- hooks -----------------------------------------------------------------------------------------------

    @override
    def selection_resolved(self) -> bool:
        return bool(self.selected_at_start)  # the run resolved it on the network as configured

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.start_step, self.end_step = self.step_at("start"), self.step_at("end")
        total = self.total_steps
        if self.end_step < self.start_step:
            raise ValueError(f"end ({self.end}) resolves to step {self.end_step}, before start ({self.start}) at "
                             f"step {self.start_step}")
        self._select(self.net_of(pl_module))  # a resumed network may have been swapped since the start
        self._bind(pl_module)
        self._mask_after_step = not all(type(o) in ZERO_PRESERVING_OPTIMIZERS for o in trainer.optimizers)
        if self.masks:  # resumed: masks came with the checkpoint
            if not set(self.masks) <= set(self.names):
                raise ValueError(f"the checkpoint's pruning masks cover {list(self.masks)}, but this configuration "
                                 f"selects {self.names}; resume with the configuration that wrote the checkpoint")
            self._stale = list(self.masks) != self.names and self.last_update_step >= 0
            self._cache_masks(pl_module.device)
            self._apply_to_weights()
        rank_zero_info(
            f"GradualMagnitudePruning: {len(self.names)} tensors, {self.schedule} schedule to "
            f"{self.final_sparsity:.1%} from step {self.start_step} to {self.end_step} of {total}"
        )

    def _bind(self, pl_module: L.LightningModule) -> None:
        params = dict(self.net_of(pl_module).named_parameters())
        self._params = [params[n] for n in self.names]

    @override
    def on_structure_change(self, trainer: L.Trainer, pl_module: L.LightningModule, entry: Any) -> None:
        if not self.selected_at_start:
            return
        self._select(self.net_of(pl_module))
        if not self._steps:  # changed in setup, before training: on_train_start binds the tensors
            return
        self._bind(pl_module)
        shapes = {n: tuple(p.shape) for n, p in zip(self.names, self._params, strict=True)}
        kept = {n: m for n, m in self.masks.items() if shapes.get(n) == tuple(m.shape)}
        self._stale = bool(self.masks) and list(kept) != self.names
        self.masks = kept
        self._cache_masks(pl_module.device)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        step = trainer.global_step
        if not self.is_update_step(step):
            return
        self._update_masks(trainer, pl_module, step)

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self._float_masks:
            return
        pairs = [(p.grad, m) for p, m in zip(self._masked, self._float_masks, strict=True) if p.grad is not None]
        if pairs:
            apply_masks_([g for g, _ in pairs], [m for _, m in pairs])

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._mask_after_step:
            self._apply_to_weights()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply_to_weights()  # cheap insurance before checkpoints are written

    # --- masks -----------------------------------------------------------------------------------------------

    def _update_masks(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        self.target = self.target_at(step)
        targets = {n: self.target_at(step, final) for n, final in self.alone_finals.items()}
        weights = dict(zip(self.names, self._params, strict=True))
        masks = magnitude_masks(weights, self.target, self.scope, targets, self.min_layer_density)
        masks = trainer.strategy.broadcast(masks, src=0)  # identical on every rank, whatever the arithmetic
        self.masks = {n: m.to(self._params[i].device) for i, (n, m) in enumerate(masks.items())}
        self.last_update_step = step
        self._stale = False
        self._cache_masks(pl_module.device)
        self._apply_to_weights()
        self._zero_optimizer_state(trainer)
        self._log(pl_module)

    def _cache_masks(self, device: torch.device) -> None:
        # Tensors swapped in since the last update have no mask yet (until the next update prunes them).
        pairs = [(p, self.masks[n]) for n, p in zip(self.names, self._params, strict=True) if n in self.masks]
        self._masked = [p for p, _ in pairs]
        self._float_masks = [m.to(device=p.device, dtype=p.dtype) for p, m in pairs]

    def _apply_to_weights(self) -> None:
        if self._float_masks:
            with torch.no_grad():
                apply_masks_([p.data for p in self._masked], self._float_masks)

    def _zero_optimizer_state(self, trainer: L.Trainer) -> None:
        """Momentum buffers and Adam moments of pruned weights go to zero, so nothing pushes them back."""
        mask_optimizer_state_(trainer.optimizers, list(zip(self._masked, self._float_masks, strict=True)))

    def _log(self, pl_module: L.LightningModule) -> None:
        fields = measured_sparsity(self.net_of(pl_module))
        metrics = {"sparsity/target": self.target, "sparsity/global": fields["sparsity/global"],
                   "sparsity/pruned": self.pruned_fraction()}
        if self.log_layers:
            metrics.update({f"sparsity/{n}": fields[f"sparsity/{n}"] for n in self.names})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)

    def pruned_fraction(self) -> float:
        """Measured zero fraction of the selected weights."""
        total = sum(p.numel() for p in self._params)
        zeros = sum(p.numel() - int(torch.count_nonzero(p.detach())) for p in self._params)
        return zeros / max(total, 1)

    # --- report, export, checkpoint --------------------------------------------------------------------------

    @override
    def report_fields(self, net: nn.Module) -> dict[str, float | int | str]:
        """Adds the schedule's last target and the selected weights' measured sparsity to the report."""
        return {"gmp/target_sparsity": self.target, "gmp/pruned_sparsity": self.pruned_fraction(),
                "gmp/tensors": len(self.names), "gmp/min_layer_density": self.min_layer_density,
                "gmp/floored_tensors": ", ".join(self.floored_tensors()) or "none"}

    def floored_tensors(self) -> list[str]:
        """Tensors that global pruning holds at their floor (``min_layer_density``): without it they would be
        pruned further, perhaps whole."""
        if self.scope != "global" or not self.min_layer_density:
            return []
        floored = []
        for name, param in zip(self.names, self._params, strict=True):
            if name in self.alone_finals:
                continue
            kept = int(torch.count_nonzero(param.detach()))
            if kept <= floor_count(param.numel(), self.min_layer_density):
                floored.append(name)
        return floored

    @override
    def export_codecs(self, net: nn.Module) -> dict[str, str]:
        """Pruned tensors are stored as bitmask + non-zero values."""
        return {n: "bitmask" for n in self.names}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
                "last_update_step": self.last_update_step, "target": self.target}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = {n: m.bool() for n, m in state_dict["masks"].items()}
        self.last_update_step = int(state_dict["last_update_step"])
        self.target = float(state_dict["target"])
