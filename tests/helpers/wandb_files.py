"""Reading what an offline W&B run wrote."""

from __future__ import annotations

import time
from pathlib import Path


def wandb_run_records(wandb_dir: Path, keys: tuple[bytes, ...], timeout: float = 60) -> tuple[Path, bytes]:
    """The one offline run under ``wandb_dir`` and its ``.wandb`` file's bytes once every key is in them.

    Protobuf records store keys as plain strings. wandb's writer is a separate process (wandb-core) that closes the
    file when the run's stream ends, which on a busy machine can come just after finish() returns."""
    (run,) = list(wandb_dir.glob("offline-run-*"))
    (run_file,) = run.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while not all(key in run_file.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    return run, run_file.read_bytes()
