"""What the console tools (sensitivity, Pareto) send to Weights & Biases: one run of their own, offline by default,
holding their table and picture, the same files they write to disk."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MODES = ("off", "offline", "online")


def add_wandb_arguments(parser) -> None:
    """``--wandb`` and ``--wandb-project`` on a tool's command line."""
    parser.add_argument("--wandb", choices=MODES, default=os.environ.get("LM_WANDB", "off"),
                        help="log the table and the picture to a W&B run of their own (offline: run files only, "
                             "`wandb sync` them later); default off, or $LM_WANDB")
    parser.add_argument("--wandb-project", default="lightning_micro", help="W&B project (default lightning_micro)")


def upload(mode: str, project: str, out_dir: Path, job_type: str, name: str,
           tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]],
           images: Mapping[str, Path]) -> Path | None:
    """Log ``tables`` (``{key: (columns, rows)}``) and ``images`` (``{key: png}``) to a new W&B run whose files go
    under ``out_dir/wandb``; the run's directory, or None when ``mode`` is ``off``."""
    if mode == "off":
        return None
    import wandb

    run = wandb.init(project=project, name=name, job_type=job_type, dir=str(out_dir), mode=mode,
                     settings=wandb.Settings(silent=True, console="off"))
    try:
        payload: dict[str, Any] = {key: wandb.Table(columns=list(columns), data=[list(row) for row in rows])
                                   for key, (columns, rows) in tables.items()}
        payload.update({key: wandb.Image(str(path)) for key, path in images.items()})
        run.log(payload)
        return Path(run.dir).parent
    finally:
        run.finish()
