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


# --- when a technique acts ------------------------------------------------------------------------------------
# A moment of the run is an epoch (int), a fraction of the run (float in [0, 1]) or an optimizer step ("step:N").

STEP_PREFIX = "step:"


def step_of(when: int | float | str, steps_per_epoch: int, total_steps: int) -> int:
    """The optimizer step at which ``when`` falls: epoch ``e`` starts at ``e * steps_per_epoch``, a fraction ``f``
    is ``round(f * total_steps)``, ``"step:N"`` is ``N``.

    Example:
        >>> step_of(2, 10, 50), step_of(0.5, 10, 50), step_of("step:7", 10, 50)
        (20, 25, 7)
    """
    if isinstance(when, str):
        return int(when.removeprefix(STEP_PREFIX))
    if isinstance(when, float):
        return int(round(when * total_steps))
    return int(when) * steps_per_epoch


def is_run_start(when: int | float | str) -> bool:
    """Whether ``when`` is the very start of the run (before the first step), whatever its unit."""
    return step_of(when, 1, 1) == 0 if not isinstance(when, float) else when == 0.0
