"""InterruptionCheckpoint: a stopped run (SIGTERM, Ctrl-C) leaves a checkpoint that ``ckpt_path=`` continues.

A cluster's scheduler ends a job with SIGTERM, a person with Ctrl-C. Lightning finishes the current batch on
SIGTERM and raises :class:`~lightning.pytorch.utilities.exceptions.SIGTERMException`; on Ctrl-C it stops where it
is; both call the callbacks' ``on_exception``. Lightning's ``OnExceptionCheckpoint`` saves on every exception,
so a diverged run or a configuration error would leave a checkpoint that looks resumable; this one saves only
on an interruption, and only while the fit is training: before its first step there is nothing new to keep,
and after its last the network may already be converted for deployment.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

INTERRUPTIONS = (SIGTERMException, KeyboardInterrupt)


class InterruptionCheckpoint(Callback):
    """Save ``<dirpath>/<filename>.ckpt`` when training is interrupted by SIGTERM or Ctrl-C (KeyboardInterrupt),
    and on no other exception nor at a normal end.

    The checkpoint is a full Lightning checkpoint (weights, optimizer, loops, callbacks' state, the record of
    structural transforms, the training loader's position), so ``ckpt_path=<it>`` continues the same compressed
    run from the next batch, exactly as if it had not stopped. SIGTERM always stops between steps; Ctrl-C can land
    inside one (half an optimizer step applied), and then the continuation is close but not exact. An existing
    file of that name is replaced. Under DDP every rank saves together (rank zero writes), as Lightning's
    SIGTERM handling stops them together.

    It is a plain callback, not one of Lightning's ``Checkpoint`` callbacks: so it works with
    ``enable_checkpointing=False``, and ``trainer.checkpoint_callback`` stays the run's ``ModelCheckpoint``.

    Args:
        dirpath: the directory of the checkpoint (the run's ``checkpoints`` directory).
        filename: its name, without the ``.ckpt`` extension.

    Raises:
        ValueError: ``dirpath`` is empty, or ``filename`` is empty, ends in ``.ckpt`` or holds a path separator.

    Example:
        >>> callback = InterruptionCheckpoint(dirpath="outputs/run/checkpoints")
        >>> callback.ckpt_path
        'outputs/run/checkpoints/interrupted.ckpt'
        >>> trainer = L.Trainer(callbacks=[callback])
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike[str], filename: str = "interrupted") -> None:
        super().__init__()
        if not isinstance(dirpath, (str, os.PathLike)) or not str(dirpath):
            raise ValueError(f"dirpath must be a non-empty directory path, got {dirpath!r}")
        if (not isinstance(filename, str) or not filename or filename.endswith(self.FILE_EXTENSION)
                or any(sep in filename for sep in ("/", os.sep))):
            raise ValueError(f"filename must be a non-empty file name without directory or {self.FILE_EXTENSION!r} "
                             f"(added), got {filename!r}")
        self.dirpath = Path(dirpath)
        self.filename = filename
        self._training = False

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint is written (a string, as Lightning's checkpoint callbacks give it)."""
        return str(self.dirpath / f"{self.filename}{self.FILE_EXTENSION}")

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True  # weights restored, sanity check done: a checkpoint from here on is complete

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, INTERRUPTIONS):
            return
        if not self._training:
            rank_zero_info(f"InterruptionCheckpoint: interrupted ({type(exception).__name__}) outside training "
                           "steps; no checkpoint written")
            return
        trainer.save_checkpoint(self.ckpt_path)  # every rank takes part; rank zero writes
        rank_zero_info(f"InterruptionCheckpoint: interrupted ({type(exception).__name__}) at step "
                       f"{trainer.global_step}; saved {self.ckpt_path}; continue with ckpt_path={self.ckpt_path}")
