"""How a run's failures reach the user: one line for what the user can fix, the traceback only when asked.

A bad config value, a bad file, a run that diverged or was interrupted is not a bug of the program, and a page of
chained tracebacks above the one line that matters hides it. :func:`reported` turns those errors into one line on
stderr and a non-zero exit; with ``HYDRA_FULL_ERROR=1`` they propagate with their whole traceback. Anything else
(a real bug) keeps its traceback.

Exit status: 2 for a config or file error (before any training step), 1 for a run that diverged, 130 for Ctrl-C
and 143 for SIGTERM (the shell's convention, 128 + the signal's number).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from lightning_micro.artifact.format import ArtifactError
from lightning_micro.artifact.trust import UntrustedSpecError
from lightning_micro.callbacks.run_stopped import RunInterrupted, RunStopped, TrainingDiverged
from lightning_micro.data.torchvision_sets import DatasetError
from lightning_micro.run.instantiate import ConfigError

__all__ = ["EXIT_INPUT_ERROR", "INPUT_ERRORS", "RunInterrupted", "RunStopped", "TrainingDiverged", "held_logs",
           "reported"]

EXIT_INPUT_ERROR = 2


# The error types that mean "this input cannot work": a config value, a dataset file, an artifact, a spec.
INPUT_ERRORS = (ConfigError, DatasetError, ArtifactError, UntrustedSpecError)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Print an input error or an early stop as ``Error: <message>`` (one line) and exit with its status."""
    try:
        yield
    except RunStopped as err:
        _exit(err, err.exit_code)
    except INPUT_ERRORS as err:
        _exit(err, EXIT_INPUT_ERROR)


def _exit(err: BaseException, code: int) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    message = " ".join(str(err).split("\n"))  # one line, whatever the message was built from
    print(f"Error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code) from None


@contextlib.contextmanager
def held_logs(*names: str) -> Iterator[None]:
    """Hold the log records of the loggers ``names`` (and their children) while the run is being set up: they are
    emitted as usual once the block ends, and dropped if it fails, so a config error prints only its own line and
    not Lightning's "GPU available" lines before it."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, list(logger.handlers), logger.propagate) for logger in loggers]
    hold = Hold()
    for logger in loggers:
        logger.handlers, logger.propagate = [hold], False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
    for record in held:  # reached only when the block succeeded
        logging.getLogger(record.name).handle(record)
