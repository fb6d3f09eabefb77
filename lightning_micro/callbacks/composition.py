"""Which techniques share a run, and on what terms: one table, read by every technique and by the docs.

A technique declares what it is as data (:attr:`~lightning_micro.callbacks.technique.CompressionTechnique.family`,
``structure_change_at``, ``int8_traceable``); :data:`RULES` says, per pair of families, what must hold. Each
technique checks the rules that name its family first against every other technique of the run, in callback
order, before the first training step (:func:`check_composition`). A pair no rule names composes freely.

Most rules are about *order*: a technique that changes the network's structure chose its layers on the network
it saw, so a change that would remove or replace those layers must come after it (same moment: listed first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FAMILIES = {  # family -> the techniques of it, as the docs name them
    "connection_pruning": "GradualMagnitudePruning",
    "channel_pruning": "StructuredPruning",
    "layer_dropping": "LayerDropping",
    "layer_swap": "TTLayerSwap, LowRankDecomposition",
    "quantization": "QuantizationAwareTraining",
    "distillation": "KnowledgeDistillation",
}


@dataclass(frozen=True)
class Pair:
    """A technique (``this``) and another of the same run, with what a rule may read of the run."""

    this: Any
    other: Any
    trainer: Any
    pl_module: Any
    techniques: Sequence[Any]

    def listed_first(self, first: Any, then: Any) -> bool:
        """Whether ``first`` comes before ``then`` in ``compression=[...]`` (the callback order)."""
        return self.techniques.index(first) < self.techniques.index(then)

    def changes_first(self, first: Any, first_at: float | None, then: Any, then_at: float | None) -> bool:
        """Whether ``first`` changes the network before ``then`` does (unknown moments do not refuse)."""
        if first_at is None or then_at is None:
            return True
        return first_at < then_at or (first_at == then_at and self.listed_first(first, then))


Check = Callable[[Pair], "str | None"]


@dataclass(frozen=True)
class Rule:
    """What must hold when a technique of family ``this`` shares a run with one of family ``other`` (``"*"``: any).

    ``check`` returns the refusal (what is wrong and what works instead), or ``None``; ``summary`` is the rule in
    a few words, for the docs' matrix.
    """

    this: str
    other: str
    check: Check
    summary: str


def _once(message: str) -> Check:
    return lambda pair: message


def _structured_before_swap(pair: Pair) -> str | None:
    removal = pair.this.fraction_at("remove_at", pair.trainer)
    swap = pair.other.fraction_at("swap_at", pair.trainer)
    if pair.changes_first(pair.this, removal, pair.other, swap):
        return None
    return (f"{pair.other.technique} swaps layers at swap_at={pair.other.swap_at!r}, before StructuredPruning "
            f"removes channels at remove_at={pair.this.remove_at!r}: the channel groups were found on the layers it "
            f"replaces. Remove first: list StructuredPruning before {pair.other.technique} with remove_at <= swap_at")


def _skipping_before_int8(pair: Pair) -> str | None:
    if pair.other.mode != "int8" or pair.this.prune_at is not None:
        return None
    return ("int8 QAT traces the network once, and LayerDropping without prune_at skips blocks to the end of the "
            "run, which a traced graph cannot do: set prune_at before QAT's start (blocks are removed, dropping "
            "stops, then int8 QAT traces the shallower network)")


def _changed_before_block_removal(pair: Pair) -> str | None:
    drop, other = pair.this, pair.other
    if drop.prune_at is None:
        return None
    if other.family == "layer_swap":  # only layers inside a droppable block can vanish under it
        if not other.layers:
            other.check_model(drop.net_of(pair.pl_module))
        if not any(layer.startswith(block + ".") for layer in other.layers for block in drop.droppable):
            return None
    moment = other.structure_change_at
    if pair.changes_first(other, other.fraction_at(moment, pair.trainer), drop,
                          drop.fraction_at("prune_at", pair.trainer)):
        return None
    return (f"{other.technique} changes layers at {moment}={getattr(other, moment)!r}, after LayerDropping removes "
            f"blocks at prune_at={drop.prune_at!r}: it chose its layers on the full-depth network, inside blocks "
            f"that may go. Change them first: {moment} before prune_at (or the same moment, {other.technique} "
            "listed first)")


def _traceable_by_int8(pair: Pair) -> str | None:
    if pair.this.mode != "int8" or pair.other.structure_change_at is None or pair.other.int8_traceable:
        return None
    return (f"int8 QAT cannot take {pair.other.technique}'s layers: torch.ao's graph mode cannot express their "
            f"contraction. Quantize them with low-bit weights instead (weight_bits: 4 or 8, activation_bits: 32), "
            f"which trains and stores them as integer codes")


def _changed_before_int8_trace(pair: Pair) -> str | None:
    qat, other = pair.this, pair.other
    moment = other.structure_change_at
    if qat.mode != "int8" or moment is None:
        return None
    if pair.changes_first(other, other.fraction_at(moment, pair.trainer), qat, qat.fraction_at("start", pair.trainer)):
        return None
    return (f"int8 QAT traces the network at start={qat.start!r}, before {other.technique} changes it at "
            f"{moment}={getattr(other, moment)!r}: a traced int8 graph cannot take new layers or shapes. Change it "
            f"first: list {other.technique} before QAT in compression=[...] with {moment} <= start")


def _disjoint_swaps(pair: Pair) -> str | None:
    # Two swaps of one layer: the second would find the first one's replacement, not the layer it selected.
    this, other = pair.this, pair.other
    if not other.layers:
        other.check_model(this.net_of(pair.pl_module))
    shared = [a for a in this.layers for b in other.layers if a == b or a.startswith(b + ".") or b.startswith(a + ".")]
    if not shared:
        return None
    return (f"{this.technique} and {other.technique} both select {shared}: a layer is swapped once; give them "
            "disjoint include/exclude patterns")


RULES: tuple[Rule, ...] = (
    Rule("channel_pruning", "channel_pruning", _once(
        "one StructuredPruning per run: its groups cover every selected layer; use overrides for per-layer ratios"),
        "one per run"),
    Rule("channel_pruning", "layer_swap", _structured_before_swap,
         "channels removed first (remove_at <= swap_at, StructuredPruning listed first)"),
    Rule("layer_dropping", "layer_dropping", _once(
        "one LayerDropping per run: it covers every droppable block; use `blocks` and `exclude` to choose them"),
        "one per run"),
    Rule("layer_dropping", "quantization", _skipping_before_int8,
         "int8: prune_at set (a traced graph cannot skip blocks to the end of the run)"),
    Rule("layer_dropping", "channel_pruning", _changed_before_block_removal,
         "channels removed before the blocks (remove_at <= prune_at)"),
    Rule("layer_dropping", "layer_swap", _changed_before_block_removal,
         "layers inside droppable blocks swapped before the blocks go (swap_at <= prune_at)"),
    Rule("quantization", "quantization", _once(
        "one QuantizationAwareTraining per run: a network is quantized once; choose int8 (weight_bits: 8, "
        "activation_bits: 8) or low-bit weights (activation_bits: 32)"), "one per run"),
    Rule("quantization", "*", _traceable_by_int8, "int8: not TT layers (low-bit weights quantize them)"),
    Rule("quantization", "*", _changed_before_int8_trace,
         "int8: every structural change before QAT's start (listed first)"),
    Rule("layer_swap", "layer_swap", _disjoint_swaps, "disjoint layers"),
)


def rules_between(this: str, other: str) -> list[Rule]:
    """The rules a technique of family ``this`` checks against one of family ``other``, in table order."""
    return [rule for rule in RULES if rule.this == this and rule.other in (other, "*")]


def check_composition(this: Any, trainer: Any, pl_module: Any, techniques: Sequence[Any]) -> None:
    """Check every rule of ``this`` technique's family against each other technique of the run.

    Raises:
        ValueError: the first refusal, which says what is wrong and what works instead.
    """
    for other in techniques:
        if other is this:
            continue
        for rule in rules_between(this.family, other.family):
            refusal = rule.check(Pair(this, other, trainer, pl_module, techniques))
            if refusal is not None:
                raise ValueError(refusal)


def composition_matrix_markdown() -> str:
    """The rules as a Markdown table, one row per pair of families a rule names (the docs' composing page)."""
    rows = ["| technique | with | rule (checked before the first step) |", "| --- | --- | --- |"]
    for rule in RULES:
        other = "any technique" if rule.other == "*" else FAMILIES[rule.other]
        rows.append(f"| {FAMILIES[rule.this]} | {other} | {rule.summary} |")
    rows.append("| every other pair | | composes freely, in any order |")
    return "\n".join(rows) + "\n"
