"""LayerDropping: residual blocks skipped at random while training (LayerDrop, stochastic depth), then some removed
for good: a shallower network, which trains on.

The Lightning glue only: finding droppable blocks, the drop rules, skipping and removal live in
:mod:`lightning_micro.core.block_removal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_micro.callbacks.argument_checks import check_count, check_fraction, check_when
from lightning_micro.callbacks.structure_change import change_structure
from lightning_micro.callbacks.technique import CompressionTechnique
from lightning_micro.core import block_removal
from lightning_micro.core.schedules import is_run_start
from lightning_micro.core.selection import check_pattern, name_matches

TRANSFORM = "layer_drop"
RESCALES = ("eval", "train", "none")


def _patterns(name: str, value: Any) -> list[str]:
    """``value`` as a list of name patterns (glob or ``re:``); a bad one raises ``ValueError`` naming ``name``."""
    patterns = [str(p) for p in ([value] if isinstance(value, str) else value)]
    for pattern in patterns:
        try:
            check_pattern(pattern)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
    return patterns


class LayerDropping(CompressionTechnique):
    """Skip each droppable block with probability ``p`` while training, then remove ``remove`` of them at
    ``prune_at`` and retrain the shallower network.

    A droppable block is a residual block whose identity path makes skipping valid (its output has its input's
    shape and adds the input back): found by tracing the network, declared by the model (a ``droppable`` attribute
    on the block), or named with ``blocks``; a block that changes shape is droppable when ``shortcuts`` names the
    submodule that runs in its place (its projection shortcut). While training, block l of L is skipped with
    probability ``p`` (``rule=uniform``, LayerDrop) or ``(l / L) p`` (``linear``, stochastic depth); the draw is
    seeded by ``seed``, the epoch and the batch index, so every DDP rank skips the same blocks and a resumed run
    draws what the uninterrupted one did. ``rescale`` keeps the full network calibrated in eval while blocks are
    dropped. Under DDP a skipped block still runs, with its residual multiplied by 0, so the gradient graph stays
    the same on every step (training is then not faster).

    At ``prune_at`` the blocks chosen by ``removal`` are replaced by a pass-through (a recorded transform, replayed
    by checkpoints and the artifact): ``every_other`` spreads them evenly over the depth (LayerDrop's
    rule), ``least_important`` takes those whose skipping raises the validation loss least, measured on
    ``importance_batches`` batches (cross-entropy of the network's output; batches ``(input, target)``). The
    optimizer and the DDP wrapper are rebuilt, the other techniques are told; dropping stops and the shallower
    network retrains.

    Args:
        p: drop probability in [0, 1): every block's (``uniform``) or the deepest block's (``linear``).
        rule: ``uniform`` or ``linear``.
        rescale: how the full network is kept calibrated while blocks are dropped: ``eval`` scales each block's
            residual by its survival probability ``1 - p_l`` in eval (stochastic depth; training runs kept blocks as
            they are, as the shallower network will run; needs ``prune_at``), ``train`` scales kept blocks' residuals
            by ``1 / (1 - p_l)`` in training (eval runs them as they are), ``none`` scales nothing (LayerDrop);
            ``None``: ``eval`` when ``prune_at`` is set, else ``train``.
        blocks: name patterns (glob or ``re:``) of the blocks to drop; ``None`` finds them in the network.
        exclude: name patterns of blocks never dropped nor removed.
        shortcuts: ``{block pattern: submodule name}``: blocks that change shape (a downsampling block with a
            projection shortcut) made droppable by saying what runs in their place when skipped, and replaces them
            when removed (e.g. ``{"layer2.0": "shortcut"}``); its output shape must be the block's.
        prune_at: when blocks are removed: an epoch (int), a fraction of the run (float) or ``"step:N"``; ``None``
            only drops (a regularizer: every block stays).
        remove: how many droppable blocks go at ``prune_at``: a count (int >= 1), a fraction of them (float in
            (0, 1], rounded half up), or a list of block names.
        removal: ``every_other`` or ``least_important`` (ignored when ``remove`` lists names).
        importance_batches: validation batches ``least_important`` measures each skipped block on.
        seed: seed of the drop draws.

    Raises:
        ValueError: an argument outside its allowed values (named in the message).

    Example:
        >>> dropping = LayerDropping(p=0.3, prune_at=0.6, remove=0.5)
        >>> trainer = L.Trainer(callbacks=[dropping])
    """

    technique = "LayerDropping"
    family = "layer_dropping"
    when_arguments = ("prune_at",)
    changes_structure = True
    traces_network = True
    must_end_before = (("prune_at", "the shallower network would never be retrained"),)

    def __init__(
        self,
        p: float = 0.2,
        rule: str = "uniform",
        rescale: str | None = None,
        blocks: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        shortcuts: Mapping[str, str] | None = None,
        prune_at: int | float | str | None = 0.5,
        remove: int | float | Sequence[str] = 0.5,
        removal: str = "every_other",
        importance_batches: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.p = check_fraction("p", p)
        if rule not in block_removal.DROP_RULES:
            raise ValueError(f"rule must be one of {list(block_removal.DROP_RULES)}, got {rule!r}")
        self.rule = rule
        if rescale is not None and rescale not in RESCALES:
            raise ValueError(f"rescale must be one of {list(RESCALES)} or null, got {rescale!r}")
        self.rescale = rescale
        self.blocks = None if blocks is None else _patterns("blocks", blocks)
        if self.blocks == []:
            raise ValueError("blocks must name at least one pattern, or be null to find the droppable blocks")
        self.exclude = _patterns("exclude", exclude)
        if shortcuts is not None and not (isinstance(shortcuts, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in shortcuts.items())):
            raise ValueError(f"shortcuts must map block name patterns to submodule names, e.g. {{'layer2.0': "
                             f"'shortcut'}}, got {shortcuts!r}")
        self.shortcuts = None if shortcuts is None else {str(k): str(v) for k, v in shortcuts.items()}
        _patterns("shortcuts", list(self.shortcuts or {}))
        self.prune_at = None if prune_at is None else check_when("prune_at", prune_at)
        if self.prune_at is None and rescale == "eval":
            raise ValueError("rescale=eval scales blocks in eval only until some are removed, but prune_at is null: "
                             "every block stays, and the exported network would not be the one validated. Use "
                             "rescale=train (or null, which picks it)")
        # eval scaling while blocks are to be removed (training runs them as the shallower network will);
        # train-time scaling when they all stay (the exported network is the one validated)
        self.scaling = rescale or ("eval" if self.prune_at is not None else "train")
        if isinstance(remove, bool) or not (
            (isinstance(remove, int) and remove >= 1) or (isinstance(remove, float) and 0.0 < remove <= 1.0)
            or (isinstance(remove, Sequence) and not isinstance(remove, str) and len(remove) > 0
                and all(isinstance(n, str) for n in remove))
        ):
            raise ValueError("remove must be a number of blocks (int >= 1), a fraction of the droppable blocks "
                             f"(float in (0, 1]) or a non-empty list of block names, got {remove!r}")
        self.remove = list(remove) if isinstance(remove, Sequence) and not isinstance(remove, str) else remove
        if removal not in block_removal.REMOVAL_RULES:
            raise ValueError(f"removal must be one of {list(block_removal.REMOVAL_RULES)}, got {removal!r}")
        self.removal = removal
        if (removal == "least_important" and not isinstance(self.remove, list) and self.prune_at is not None
                and is_run_start(self.prune_at)):
            raise ValueError(f"removal=least_important measures the trained network, but prune_at={prune_at!r} is "
                             "the start of the run: remove later, or use removal=every_other or a list of blocks")
        self.importance_batches = check_count("importance_batches", importance_batches)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed

        self.droppable: list[str] = []  # the droppable blocks, in depth order (check_model)
        self.bypass: dict[str, str] = {}  # droppable blocks run as their shortcut submodule when skipped
        self.own_stochastic_depth: dict[str, float] = {}  # the blocks' own drop modules, turned off (check_model)
        self.probabilities: list[float] = []
        # Saved in checkpoints: the removed blocks and the losses that chose them.
        self.removed_blocks: list[str] = []
        self.losses: dict[str, float] = {}
        self.loss_full: float | None = None  # validation loss right before the removal, all blocks running
        self.loss_removed: float | None = None  # ... and with the removed blocks skipped (before retraining)
        self._dropping = False
        self._batches: list[Any] | None = None
        self.skipped_last = 0

    @property
    def structure_change_at(self) -> str | None:  # type: ignore[override]
        return "prune_at" if self.prune_at is not None else None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(p=self.p, rule=self.rule)

    # --- selection -----------------------------------------------------------------------------------------

    @override
    def check_model(self, net: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Find the droppable blocks of ``net``; raise ``ValueError`` naming the argument when there is none, a
        named block cannot be skipped, or ``remove`` asks for more blocks than there are."""
        if example_input is None:
            raise ValueError("LayerDropping runs the network once to check its blocks' shapes and needs an example "
                             "input: set self.example_input_array = torch.zeros(1, ...) in the LightningModule")
        bypass = block_removal.shortcut_blocks(net, self.shortcuts, example_input) if self.shortcuts else {}
        if self.blocks is None:
            found = block_removal.droppable_blocks(net, example_input)
            found = block_removal.call_order(net, [*found, *(n for n in bypass if n not in found)], example_input)
            if not found:
                raise ValueError(f"{type(net).__name__} has no droppable block (a residual block adding its input "
                                 "back, output shaped like its input, or where there is none a block of an "
                                 "nn.Sequential or nn.ModuleList keeping its input's shape): name blocks with "
                                 "`blocks` patterns, or "
                                 "declare them with a `droppable = True` attribute on the block module")
        else:
            found = block_removal.named_blocks(net, self.blocks, example_input, reshaping=bypass)
        for pattern in self.exclude:
            if not any(name_matches(n, pattern) for n in found):
                raise ValueError(f"exclude: pattern {pattern!r} matches no droppable block; droppable: "
                                 f"{', '.join(found)}")
        blocks = [n for n in found if not any(name_matches(n, p) for p in self.exclude)]
        if not blocks:
            raise ValueError(f"exclude {self.exclude} leaves no droppable block of {', '.join(found)}")
        if isinstance(self.remove, list):
            unknown = [n for n in self.remove if n not in blocks]
            if unknown:
                raise ValueError(f"remove: {unknown} are not droppable blocks; droppable: {', '.join(blocks)}")
        elif self.remove_count(len(blocks)) > len(blocks):
            raise ValueError(f"remove={self.remove} blocks, but {type(net).__name__} has {len(blocks)} droppable "
                             f"blocks ({', '.join(blocks)}); allowed: 1 to {len(blocks)}, or a fraction in (0, 1]")
        self.droppable = blocks
        self.own_stochastic_depth = block_removal.own_stochastic_depth(net, blocks)
        self.bypass = {n: s for n, s in bypass.items() if n in blocks}
        self.probabilities = block_removal.drop_probabilities(len(blocks), self.p, self.rule)

    def remove_count(self, count: int) -> int:
        """How many of ``count`` droppable blocks go at ``prune_at``."""
        if isinstance(self.remove, list):
            return len(self.remove)
        if isinstance(self.remove, float):
            return max(1, int(self.remove * count + 0.5))
        return self.remove

    @override
    def selection_resolved(self) -> bool:
        return bool(self.droppable)

    @override
    def initialize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan = (f"{self.remove_count(len(self.droppable))} removed at {self.prune_at!r} ({self.removal})"
                if self.prune_at is not None else "none removed")
        # A block's own stochastic depth (torchvision's, timm's) would drop its branch on top of the whole block.
        block_removal.turn_off_stochastic_depth(self.net_of(pl_module), list(self.own_stochastic_depth))
        own = (f"; the blocks' own stochastic depth is off, whole blocks drop instead: "
               f"{', '.join(f'{n} (p={p:g})' for n, p in self.own_stochastic_depth.items())}"
               if self.own_stochastic_depth else "")
        rank_zero_info(f"LayerDropping: {len(self.droppable)} droppable blocks ({', '.join(self.droppable)}), "
                       f"p={self.p} ({self.rule}); {plan}{own}")
        if self.prune_at is not None and is_run_start(self.prune_at) and not self.removed(pl_module):
            self._remove(trainer, pl_module, during_fit=False)

    def removed(self, pl_module: L.LightningModule) -> bool:
        """Whether the module's record holds the removal."""
        return any(entry["transform"] == TRANSFORM for entry in pl_module.transforms)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.prune_at is not None and self.step_at("prune_at") >= self.total_steps and not self.removed(pl_module):
            raise ValueError(f"prune_at={self.prune_at} is step {self.step_at('prune_at')}, at or after the end of "
                             f"training ({self.total_steps} steps): the shallower network would never be retrained")
        if not self.removed(pl_module) and self.p > 0:
            # Under DDP a skipped block still runs (times 0): every parameter is in every step's graph.
            eval_scales = ({n: 1.0 - p for n, p in zip(self.droppable, self.probabilities, strict=True)}
                           if self.scaling == "eval" else None)
            block_removal.make_droppable(self.net_of(pl_module), self.droppable, compute_skipped=trainer.world_size > 1,
                                 shortcuts=self.bypass, eval_scales=eval_scales)
            self._dropping = True

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        if self.removed(pl_module):
            return
        if self.prune_at is not None and trainer.global_step >= self.step_at("prune_at"):
            self._remove(trainer, pl_module, during_fit=True)
            rank_zero_info(f"LayerDropping: removed {', '.join(self.removed_blocks)} at step {trainer.global_step}")
            return
        if self._dropping:
            factors = self.drop_factors(trainer.current_epoch, batch_idx)
            block_removal.set_drop_factors(self.net_of(pl_module), factors)
            self.skipped_last = sum(f == 0.0 for f in factors.values())
            pl_module.log("layerdrop/skipped", float(self.skipped_last), on_step=True, on_epoch=False,
                          sync_dist=False, rank_zero_only=True)

    def drop_factors(self, epoch: int, batch_idx: int) -> dict[str, float]:
        """Each droppable block's factor for the batch ``batch_idx`` of ``epoch``: 0 when skipped, else 1 (or
        ``1 / (1 - p_l)`` with ``rescale=train``). A function of the seed, the epoch and the batch index only."""
        generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + batch_idx)
                                                  % (2**63 - 1))
        draws = torch.rand(len(self.droppable), generator=generator).tolist()
        return {name: (0.0 if u < p else (1.0 / (1.0 - p) if self.scaling == "train" else 1.0))
                for name, u, p in zip(self.droppable, draws, self.probabilities, strict=True)}

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._dropping:  # the network leaves the fit with its blocks' own forward
            block_removal.undo_droppable(self.net_of(pl_module), self.droppable)
            self._dropping = False

    # --- removal -----------------------------------------------------------------------------------------------

    def choose(self, trainer: L.Trainer | None, pl_module: L.LightningModule) -> list[str]:
        """The blocks removed at ``prune_at``, in depth order."""
        if isinstance(self.remove, list):
            return [n for n in self.droppable if n in self.remove]
        count = self.remove_count(len(self.droppable))
        if self.removal == "every_other" or trainer is None:
            return [self.droppable[i] for i in block_removal.every_other(len(self.droppable), count)]
        self.losses = {name: self.loss_skipping(trainer, pl_module, [name]) for name in self.droppable}
        chosen = block_removal.least_important(self.losses, count)
        return list(trainer.strategy.broadcast(chosen, src=0))  # one choice on every rank, whatever its shard

    def loss_skipping(self, trainer: L.Trainer, pl_module: L.LightningModule, names: Sequence[str],
                      as_removed: bool = True) -> float:
        """The mean cross-entropy on ``importance_batches`` validation batches (training batches when the run has
        no validation) with the blocks ``names`` skipped, the network in eval; ``as_removed``: the other blocks
        without their eval scaling, as the network runs once blocks are removed."""
        if self._batches is None:
            self._batches = self._importance_batches(trainer)
        net = self.net_of(pl_module)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), block_removal.skipping(net, names, self.bypass), block_removal.unscaled(
                    net, self.droppable if as_removed else []):
                return sum(F.cross_entropy(net(x), y).item() for x, y in self._batches) / max(len(self._batches), 1)
        finally:
            net.train(was_training)

    def _importance_batches(self, trainer: L.Trainer) -> list[Any]:
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
        loaders = trainer.val_dataloaders
        if not loaders:
            rank_zero_warn("LayerDropping: no validation data; the losses of skipped blocks are measured on training "
                           "batches")
            loaders = trainer.train_dataloader
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        batches = []
        for batch in loader:
            if len(batches) == self.importance_batches:
                break
            batches.append(trainer.strategy.batch_to_device(batch))
        return batches

    def _remove(self, trainer: L.Trainer | None, pl_module: L.LightningModule, during_fit: bool) -> None:
        names = self.choose(trainer, pl_module)
        if trainer is not None and during_fit:  # what the removal costs before retraining (report)
            self.loss_full = self.loss_skipping(trainer, pl_module, [], as_removed=False)  # as it validated
            self.loss_removed = self.loss_skipping(trainer, pl_module, names)
        self._batches = None
        block_removal.undo_droppable(self.net_of(pl_module), self.droppable)
        self._dropping = False
        self.removed_blocks = names
        shortcuts = {n: self.bypass[n] for n in names if n in self.bypass}
        args = {"blocks": names, **({"shortcuts": shortcuts} if shortcuts else {})}
        if trainer is None:
            pl_module.apply_transform(TRANSFORM, **args)
        else:
            change_structure(trainer, pl_module, TRANSFORM, during_fit=during_fit, **args)

    @override
    def finalize(self, pl_module: L.LightningModule) -> None:
        """A run that ended before ``prune_at`` (shortened for a quick look) still exports the shallower network
        (``least_important`` needs data: it falls back to ``every_other`` there, and says so)."""
        if self.prune_at is None or self.removed(pl_module) or not self.droppable:
            return
        if self.removal == "least_important" and not isinstance(self.remove, list):
            rank_zero_warn("LayerDropping: the run ended before prune_at; blocks removed every other one "
                           "(least_important needs the validation data of a fit)")
        self._remove(None, pl_module, during_fit=False)

    # --- report, checkpoint --------------------------------------------------------------------------------

    @override
    def report_fields(self, net: nn.Module) -> dict[str, int | float | str]:
        """The drop rule, the droppable and removed blocks, and the losses that chose them."""
        fields: dict[str, int | float | str] = {
            "layerdrop/p": self.p, "layerdrop/rule": self.rule, "layerdrop/rescale": self.scaling,
            "layerdrop/droppable": len(self.droppable),
            "layerdrop/removed": len(self.removed_blocks),
            "layerdrop/removed_blocks": ",".join(self.removed_blocks) or "none",
            "layerdrop/removal": "listed" if isinstance(self.remove, list) else self.removal}
        if self.own_stochastic_depth:
            fields["layerdrop/own_stochastic_depth_off"] = ", ".join(self.own_stochastic_depth)
        if self.loss_full is not None and self.loss_removed is not None:
            fields["layerdrop/val_loss_before_removal"] = self.loss_full
            fields["layerdrop/val_loss_blocks_removed"] = self.loss_removed
        for name, value in self.losses.items():
            fields[f"layerdrop/loss_skipped/{name}"] = value
        return fields

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"removed_blocks": list(self.removed_blocks), "losses": dict(self.losses),
                "loss_full": self.loss_full, "loss_removed": self.loss_removed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.removed_blocks = [str(n) for n in state_dict["removed_blocks"]]
        self.losses = {str(k): float(v) for k, v in state_dict["losses"].items()}
        self.loss_full, self.loss_removed = state_dict.get("loss_full"), state_dict.get("loss_removed")
