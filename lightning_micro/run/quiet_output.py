"""Known third-party noise, silenced at its source for ``train.py``, and the run's log kept in its directory.

Only the command line calls :func:`quiet_third_party`: a user's own script with our callbacks keeps every warning.
Each filter names the exact message it drops; a new warning still shows.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

# (message regex, why it is dropped)
KNOWN_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     "Lightning's own use of torch's pytree API (lightning/pytorch/utilities/_pytree.py), twice a run"),
)
# Lightning log lines that advertise or describe our own set-up, not the user's run
KNOWN_LOG_LINES = (
    "try installing [litlogger]",  # an advertisement for a hosted logger
    "Trainer already configured with model summary callbacks",  # we configure RichModelSummary on purpose
)
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
QUIET_LOGGERS = ("alembic",)  # the Optuna sweeper's import lists its storage plugins


class _DropKnownLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in KNOWN_LOG_LINES)


def quiet_third_party(argv: Sequence[str] = ()) -> None:
    """Drop the known warnings and log lines above; W&B prints nothing (the run prints its one line instead) unless
    ``WANDB_SILENT`` is set otherwise; with a study in ``argv`` (``hparams_search=``), Optuna logs warnings only."""
    for message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    drop = _DropKnownLines()
    for name in (*LIGHTNING_LOGGERS, *(f"{n}.utilities.rank_zero" for n in LIGHTNING_LOGGERS)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownLines) for f in logger.filters):
            logger.addFilter(drop)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")
    if any(arg.startswith("hparams_search=") for arg in argv):
        import optuna  # sets its own level when imported, so only after the import

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def log_into_run_file() -> None:
    """Lightning's loggers do not propagate to the root logger, whose file handler Hydra points at the run's
    ``train.log``: give them that handler too, so the file holds the run's log (what the console shows, the
    tables aside)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler) and h not in files]:
            logger.removeHandler(handler)  # an earlier job's file, in a sweep
        for handler in files:
            if handler not in logger.handlers:
                logger.addHandler(handler)
