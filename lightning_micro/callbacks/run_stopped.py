"""The ways a fit stops early that the user must see: the run turns them into one line and an exit status
(:func:`lightning_micro.run.failures.reported`)."""

from __future__ import annotations


class RunStopped(Exception):
    """A run that ended early for a reason the user must see; ``exit_code`` is the process's status."""

    exit_code = 1


class TrainingDiverged(RunStopped):
    """The loss or the weights became NaN or infinite; nothing was exported."""


class RunInterrupted(RunStopped):
    """SIGTERM or Ctrl-C stopped training; the message says which checkpoint continues it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
