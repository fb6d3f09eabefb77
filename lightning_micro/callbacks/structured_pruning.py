"""StructuredPruning: neuron- and filter-level pruning during training, then the channels removed for good.

The Lightning glue only: coupling, importance, masks and removal live in :mod:`lightning_micro.core.channels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.argument_checks import (
    check_count,
    check_fraction,
    check_patterns,
    check_when,
    check_window,
)
from lightning_micro.callbacks.structure_change import change_structure
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.core import channels
from lightning_micro.core.masks import mask_optimizer_state_
from lightning_micro.core.schedules import SPARSITY_SCHEDULES
from lightning_micro.core.selection import check_pattern, name_matches

TRANSFORM = "channel_prune"


class StructuredPruning(CompressionTechnique):
    """Mask the least important channels (neurons, filters) gradually while training, then remove them: the
    network becomes a thinner dense network, which trains on.

    Coupled layers lose the same channels (Torch-Pruning's dependency graph finds them): a convolution's
    BatchNorm and the next layer's inputs, every layer writing into one residual sum, a depthwise convolution's
    inputs and outputs. Between ``start`` and ``end`` the fraction of channels masked follows ``schedule`` (GMP's
    schedules), recomputed every ``update_every`` optimizer steps; a masked channel's every weight (filters,
    bias, BatchNorm scale and shift, the consumers' input weights) is zero, its gradients are masked and its
    optimizer state zeroed, so it contributes nothing and never comes back. At ``remove_at`` the masked channels
    are sliced away (a recorded transform, replayed by checkpoints and the artifact); optimizer state is sliced
    with the parameters, and the other techniques of the run are told.

    Args:
        channel_ratio: fraction of each group's channels removed at the end (``layerwise``) or of all selected
            channels (``global``), in [0, 1).
        importance: ``l1`` or ``l2`` norm of a channel's filters, or ``bn_scale``: the absolute BatchNorm scale
            (network slimming; every selected layer needs a BatchNorm after it).
        scope: ``layerwise`` (each group loses ``channel_ratio``) or ``global`` (one ranking, each group's scores
            divided by their mean).
        start: when masking starts: an epoch (int), a fraction of the run (float) or ``"step:N"``.
        end: when ``channel_ratio`` is reached, same units.
        update_every: optimizer steps between mask updates (>= 1).
        schedule: ``cubic``, ``linear`` or ``one_shot``.
        remove_at: when the masked channels are removed (same units, not before ``end``; ``None``: at ``end``).
        min_channels: channels every group keeps at least (>= 1, at most the smallest selected group's).
        round_to: kept channels rounded to a multiple of this (8 suits integer and vector kernels).
        overrides: ``{pattern: channel ratio}``: a group with a layer writing it that matches keeps its own ratio
            (on the same schedule; under ``global`` it is left out of the ranking).
        include: name patterns (glob or ``re:``) of the Conv/Linear layers whose output channels may go; a group
            is pruned when one of the layers writing it matches and none is excluded.
        exclude: name patterns of layers whose channels stay.
        bn_penalty: network slimming's L1 penalty on the selected groups' BatchNorm scales, added to the
            training loss through the compression contract (0: off).
        log_layers: log each group's kept channels at every update.

    Raises:
        ValueError: an argument outside its allowed values (named in the message).

    Example:
        >>> pruning = StructuredPruning(channel_ratio=0.6, end=0.5, round_to=8)
        >>> pruning.remove_at
        0.5
        >>> trainer = L.Trainer(callbacks=[pruning])
    """

    technique = "StructuredPruning"
    when_arguments = ("start", "end", "remove_at")
    family = "channel_pruning"
    changes_structure = True
    structure_change_at = "remove_at"
    traces_network = True
    must_end_before = (("remove_at", "the thinner network would never be retrained"),)

    def __init__(
        self,
        channel_ratio: float = 0.5,
        importance: str = "l1",
        scope: str = "layerwise",
        start: int | float | str = 0,
        end: int | float | str = 0.5,
        update_every: int = 50,
        schedule: str = "cubic",
        remove_at: int | float | str | None = None,
        min_channels: int = 1,
        round_to: int = 1,
        overrides: Mapping[str, float] | None = None,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        bn_penalty: float = 0.0,
        log_layers: bool = True,
    ) -> None:
        super().__init__()
        self.channel_ratio = check_fraction("channel_ratio", channel_ratio)
        if importance not in channels.IMPORTANCES:
            raise ValueError(f"importance must be one of {list(channels.IMPORTANCES)}, got {importance!r}")
        self.importance = importance
        if scope not in ("layerwise", "global"):
            raise ValueError(f"scope must be 'layerwise' or 'global', got {scope!r}")
        self.scope = scope
        self.start, self.end = check_window(start, end)
        self.remove_at = self.end if remove_at is None else check_when("remove_at", remove_at)
        if type(self.remove_at) is type(self.end) and self.remove_at < self.end:
            raise ValueError(f"remove_at ({remove_at}) is before end ({end}): channels are removed once the "
                             "schedule has masked them all")
        self.update_every = check_count("update_every", update_every, " (optimizer steps)")
        self.min_channels = check_count("min_channels", min_channels)
        self.round_to = check_count("round_to", round_to)
        if schedule not in SPARSITY_SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SPARSITY_SCHEDULES)}, got {schedule!r}")
        self.schedule = schedule
        self.overrides = {str(k): check_fraction(f"overrides[{k!r}]", v) for k, v in dict(overrides or {}).items()}
        for pattern in self.overrides:
            try:
                check_pattern(pattern)
            except ValueError as err:
                raise ValueError(f"overrides: {err}") from err
        self.include, self.exclude = check_patterns(include, exclude)
        if isinstance(bn_penalty, bool) or not isinstance(bn_penalty, (int, float)) or not bn_penalty >= 0:
            raise ValueError(f"bn_penalty must be a number >= 0, got {bn_penalty!r}")
        self.bn_penalty = float(bn_penalty)
        self.log_layers = log_layers

        # Resolved on the network as configured (check_model).
        self.groups: list[channels.ChannelGroup] = []
        self.left_whole: dict[str, str] = {}  # selected groups that stay whole, with the reason (check_model)
        self.finals: list[float] = []  # each group's final ratio (layerwise) or its override
        self.overridden: dict[int, float] = {}  # group index -> its own final ratio
        # Saved in checkpoints: the channels each group keeps, by group name.
        self.kept: dict[str, list[int]] = {}
        self.last_update_step = -1
        self.target = 0.0
        self._masked: list[tuple[nn.Parameter, torch.Tensor]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(channel_ratio=self.channel_ratio, include=tuple(self.include))

    # --- selection -----------------------------------------------------------------------------------------

    @override
    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Find the coupled channel groups of ``net`` and the ones this callback prunes; raise ``ValueError``
        naming the argument when a pattern matches no layer whose channels can go, a selected group cannot be
        removed consistently, or ``min_channels`` / ``importance`` cannot apply."""
        if example_input is None:
            raise ValueError("StructuredPruning traces the network to find coupled channels and needs an example "
                             "input: set self.example_input_array = torch.zeros(1, ...) in the LightningModule")
        groups = channels.check_removable(net, channels.channel_groups(net, example_input), example_input)
        layers = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
        producing = {p for g in groups if not g.unsupported for p in g.producers}
        candidates = [n for n in layers if n in producing]  # in model order
        for arg, patterns in (("include", self.include), ("exclude", self.exclude), ("overrides", self.overrides)):
            for pattern in patterns:
                if any(name_matches(p, pattern) for p in candidates):
                    continue
                blocked = [g for g in groups if g.unsupported and any(name_matches(p, pattern) for p in g.producers)]
                if blocked:
                    raise ValueError(f"{arg}: pattern {pattern!r} selects {blocked[0].name}, whose channels cannot be "
                                     f"removed consistently: {blocked[0].unsupported}")
                outputs = [n for n in layers if name_matches(n, pattern)]
                what = (f"matches only {', '.join(outputs)}, whose output channels are the network's outputs"
                        if outputs else "matches no layer")
                raise ValueError(f"{arg}: pattern {pattern!r} {what}; layers whose channels can be removed: "
                                 f"{', '.join(candidates) or 'none'}")
        chosen = [g for g in groups if not g.unsupported
                  and any(any(name_matches(p, pattern) for pattern in self.include) for p in g.producers)
                  and not any(any(name_matches(p, pattern) for pattern in self.exclude) for p in g.producers)]
        if not chosen:
            raise ValueError(f"include {self.include} minus exclude {self.exclude} leaves no layer whose channels "
                             f"can be removed; candidates: {', '.join(candidates) or 'none'}")
        for group in chosen:
            if group.unit == "channel" and self.min_channels > group.size:
                raise ValueError(f"min_channels={self.min_channels} is more than {group.name} has ({group.size} "
                                 "channels); allowed: 1 to the smallest selected layer's channels "
                                 f"({min(g.size for g in chosen if g.unit == 'channel')})")
            if self.importance == "bn_scale" or self.bn_penalty:
                if not any(isinstance(net.get_submodule(m), nn.modules.batchnorm._BatchNorm) and side == channels.OUT
                           for m, side, _, _ in group.members):
                    arg = "importance=bn_scale" if self.importance == "bn_scale" else "bn_penalty"
                    raise ValueError(f"{arg} needs a BatchNorm after every selected layer, but {group.name}'s "
                                     "channels have none: use importance l1 or l2, or exclude it")
        self.groups = chosen
        # groups the selection matches but that stay whole, with the reason (the log and the report name them)
        self.left_whole = {g.name: g.unsupported for g in groups if g.unsupported
                           and any(any(name_matches(p, pattern) for pattern in self.include) for p in g.producers)
                           and not any(any(name_matches(p, pattern) for pattern in self.exclude)
                                       for p in g.producers)}
        self.overridden = {}
        for i, group in enumerate(chosen):  # the first override pattern matching a layer writing the group wins
            ratios = [v for p, v in self.overrides.items() if any(name_matches(q, p) for q in group.producers)]
            if ratios:
                self.overridden[i] = ratios[0]
        self.finals = [self.overridden.get(i, self.channel_ratio) for i in range(len(chosen))]

    @override
    def selection_resolved(self) -> bool:
        return bool(self.groups)

    # --- hooks -----------------------------------------------------------------------------------------------

    @override
    def initialize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bn_penalty:
            self.add_loss_term(pl_module, "structured/bn_l1", self._bn_l1)
        heads = sum(g.unit == "head" for g in self.groups)
        rank_zero_info(f"StructuredPruning: {len(self.groups)} channel groups "
                       + (f"({heads} of attention heads) " if heads else "")
                       + f"({', '.join(g.name for g in self.groups)}), {self.channel_ratio:.0%} of channels by "
                       f"{self.importance}, removed at {self.remove_at!r}"
                       + "".join(f"; left whole {name}: {why}" for name, why in self.left_whole.items()))

    def _bn_l1(self, module: L.LightningModule, **context: Any) -> torch.Tensor:
        if self.removed(module):
            return torch.zeros((), device=module.device)
        net = self.net_of(module)
        norms = {m for g in self.groups for m, side, _, _ in g.members
                 if side == channels.OUT and isinstance(net.get_submodule(m), nn.modules.batchnorm._BatchNorm)}
        return self.bn_penalty * sum(net.get_submodule(m).weight.abs().sum() for m in sorted(norms))

    def removed(self, pl_module: L.LightningModule) -> bool:
        """Whether the module's record holds the removal."""
        return any(entry["transform"] == TRANSFORM for entry in pl_module.transforms)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        steps = {name: self.step_at(name) for name in self.when_arguments}
        if not steps["start"] <= steps["end"] <= steps["remove_at"]:
            raise ValueError(f"start, end and remove_at resolve to steps {steps['start']}, {steps['end']} and "
                             f"{steps['remove_at']}: they must come in that order")
        if self.kept and not self.removed(pl_module):  # resumed between start and the removal
            self._bind_masks(pl_module)
            self._apply_masks()

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        if self.removed(pl_module):
            return
        step = trainer.global_step
        if step >= self.step_at("remove_at"):
            if self.last_update_step < self.step_at("end"):  # the schedule's last update lands on the target
                self._update(trainer, pl_module, max(step, self.step_at("end")))
            self._remove(trainer, pl_module, during_fit=True)
            rank_zero_info(f"StructuredPruning: channels removed at step {step}: {self.kept_summary()}")
        elif self._is_update_step(step):
            self._update(trainer, pl_module, step)

    def _is_update_step(self, step: int) -> bool:
        start, end = self.step_at("start"), self.step_at("end")
        if step < start or step == self.last_update_step:
            return False
        if step >= end:
            return self.last_update_step < end
        return (step - start) % self.update_every == 0

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        for param, mask in self._masked:
            if param.grad is not None:
                param.grad.mul_(mask)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._apply_masks()  # whatever the optimizer (weight decay, Adam's epsilon): masked weights stay zero

    @override
    def on_structure_change(self, trainer: L.Trainer, pl_module: L.LightningModule, entry: Any) -> None:
        if self._masked:  # another technique replaced modules (fake quantization): masks follow by name
            self._bind_masks(pl_module)

    # --- schedule, masks, removal -----------------------------------------------------------------------------

    def ratio_at(self, step: int, final: float) -> float:
        """The scheduled fraction of channels masked at optimizer step ``step`` for a final ratio ``final``."""
        return SPARSITY_SCHEDULES[self.schedule](step, 0.0, final, self.step_at("start"), self.step_at("end"))

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        net = self.net_of(pl_module)
        self.target = self.ratio_at(step, self.channel_ratio)
        scores = [channels.channel_importance(net, g, self.importance) for g in self.groups]
        alive = [self.kept.get(g.name, list(range(g.size))) for g in self.groups]
        counts = [channels.kept_count(g.size, self.ratio_at(step, final), *self._floor_and_rounding(g))
                  for g, final in zip(self.groups, self.finals, strict=True)]
        if self.scope == "global":
            fixed = {i: counts[i] for i in self.overridden}
            floors = [min(g.size, self._floor_and_rounding(g)[0]) for g in self.groups]
            counts = channels.global_counts(scores, alive, self.target, fixed, floors)
            counts = [channels.kept_count(g.size, 1 - c / g.size, *self._floor_and_rounding(g)) if i not in fixed
                      else c for i, (g, c) in enumerate(zip(self.groups, counts, strict=True))]
        kept = channels.select_channels(scores, counts, alive)
        kept = trainer.strategy.broadcast(kept, src=0)  # identical on every rank, whatever the arithmetic
        self.kept = {g.name: list(k) for g, k in zip(self.groups, kept, strict=True)}
        self.last_update_step = step
        self._bind_masks(pl_module)
        self._apply_masks()
        mask_optimizer_state_(trainer.optimizers, self._masked)
        metrics = {"structured/target_ratio": self.target, "structured/kept_fraction": self.kept_fraction()}
        if self.log_layers:
            metrics.update({f"structured/kept/{g.name}": float(len(self.kept[g.name])) for g in self.groups})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)

    def _floor_and_rounding(self, group: channels.ChannelGroup) -> tuple[int, int]:
        """``(min_channels, round_to)`` of ``group``: a group of attention heads keeps one head at least, unrounded
        (its channels come in whole heads already)."""
        return (self.min_channels, self.round_to) if group.unit == "channel" else (1, 1)

    def _kept_lists(self) -> list[list[int]]:
        return [self.kept.get(g.name, list(range(g.size))) for g in self.groups]

    def _bind_masks(self, pl_module: L.LightningModule) -> None:
        net = self.net_of(pl_module)
        tensors = dict(net.named_parameters())
        masks = channels.channel_masks(net, self.groups, self._kept_lists())
        self._masked = [(tensors[name], mask.to(device=tensors[name].device, dtype=tensors[name].dtype))
                        for name, mask in masks.items() if name in tensors]

    def _apply_masks(self) -> None:
        with torch.no_grad():
            for param, mask in self._masked:
                param.mul_(mask)

    def _remove(self, trainer: L.Trainer | None, pl_module: L.LightningModule, during_fit: bool) -> None:
        self._apply_masks()
        plan = channels.removal_plan(self.net_of(pl_module), self.groups, self._kept_lists())
        self._masked = []
        if trainer is None:
            pl_module.apply_transform(TRANSFORM, layers=plan)
        else:
            change_structure(trainer, pl_module, TRANSFORM, during_fit=during_fit, layers=plan)

    @override
    def finalize(self, pl_module: L.LightningModule) -> None:
        """A run that ended before ``remove_at`` (shortened for a quick look) still exports the thinner network."""
        if self.kept and not self.removed(pl_module):
            self._remove(None, pl_module, during_fit=False)

    # --- report, checkpoint --------------------------------------------------------------------------------

    def kept_fraction(self) -> float:
        """Kept channels over all channels of the selected groups."""
        total = sum(g.size for g in self.groups)
        return sum(len(k) for k in self._kept_lists()) / max(total, 1)

    def kept_summary(self) -> str:
        return ", ".join(f"{g.name} {len(k)}/{g.size}{' heads' if g.unit == 'head' else ''}"
                         for g, k in zip(self.groups, self._kept_lists(), strict=True))

    @override
    def report_fields(self, net: nn.Module) -> dict[str, int | float | str]:
        """Kept channels per group (``kept/total``), the fraction kept, the importance and the schedule's target."""
        fields: dict[str, int | float | str] = {
            "structured/importance": self.importance, "structured/target_ratio": self.target,
            "structured/kept_fraction": self.kept_fraction(), "structured/groups": len(self.groups)}
        for group, kept in zip(self.groups, self._kept_lists(), strict=True):
            fields[f"structured/kept/{group.name}"] = f"{len(kept)}/{group.size}"
        if self.left_whole:
            fields["structured/left_whole"] = ", ".join(self.left_whole)
        return fields

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"kept": {k: list(v) for k, v in self.kept.items()}, "last_update_step": self.last_update_step,
                "target": self.target}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.kept = {str(k): [int(i) for i in v] for k, v in state_dict["kept"].items()}
        self.last_update_step = int(state_dict["last_update_step"])
        self.target = float(state_dict["target"])
