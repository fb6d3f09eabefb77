"""Sparsity schedules: pure functions of the optimizer step.

Each takes ``(step, initial, final, start, end)`` in optimizer steps and returns the target sparsity at
``step``: 0 before ``start`` (nothing pruned yet), ``final`` from ``end`` on.
"""

from __future__ import annotations

from collections.abc import Callable

SparsitySchedule = Callable[[int, float, float, int, int], float]


def _progress(step: int, start: int, end: int) -> float:
    if end <= start:
        return 1.0
    return min(max((step - start) / (end - start), 0.0), 1.0)


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3``.

    Prunes fast while many redundant weights remain and slowly near the end.

    Example:
        >>> cubic_sparsity(50, 0.0, 0.9, 0, 100)
        0.7875
    """
    if step < start:
        return 0.0
    return final + (initial - final) * (1.0 - _progress(step, start, end)) ** 3


def linear_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Sparsity rising in a straight line from ``initial`` at ``start`` to ``final`` at ``end``."""
    if step < start:
        return 0.0
    return initial + (final - initial) * _progress(step, start, end)


def one_shot_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """All of ``final`` at once at ``start`` (``initial`` and ``end`` are ignored)."""
    return 0.0 if step < start else final


SPARSITY_SCHEDULES: dict[str, SparsitySchedule] = {
    "cubic": cubic_sparsity,
    "linear": linear_sparsity,
    "one_shot": one_shot_sparsity,
}
