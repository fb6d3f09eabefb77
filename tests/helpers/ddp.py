"""2-process DDP fits (gloo, CPU) in a subprocess: the scripts beside this file, and a check that the ranks agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.config import ROOT

TRANSFORM_SCRIPT = Path(__file__).with_name("ddp_transform_script.py")
PRUNING_SCRIPT = Path(__file__).with_name("ddp_pruning_script.py")


def run_on_two_ranks(out: Path, technique: str) -> dict:
    """Run the transform script for ``technique``; check both ranks ended with the same record and identical
    weights, and return rank 0's ``{"weights", "transforms"}``."""
    done = subprocess.run([sys.executable, str(TRANSFORM_SCRIPT), str(out), technique], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert rank0["transforms"] == rank1["transforms"]
    assert rank0["weights"].keys() == rank1["weights"].keys() and rank0["weights"]
    for name, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][name]), name
    return rank0
