"""The command line as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.config import ROOT


def run_cli(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python train.py <args>`` from the project root, as a user types it."""
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )
