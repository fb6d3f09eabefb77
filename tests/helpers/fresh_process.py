"""An exported artifact scored on the digits test set in a fresh Python process: what a deployment sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.config import ROOT

# A zoo network's artifact: prints the accuracy.
ZOO_ARTIFACT_ACCURACY = (
    "import sys, torch\n"
    "from lightning_micro.data import DigitsDataModule\n"
    "from lightning_micro.artifact.format import load_compressed\n"
    "net = load_compressed(sys.argv[1])\n"
    "dm = DigitsDataModule(); dm.setup('test')\n"
    "x, y = dm.test_set.tensors\n"
    "with torch.no_grad(): print((net(x).argmax(1) == y).float().mean().item())\n"
)
# A user module's artifact (tests/helpers/user_modules.py, user_nets.py): prints the network's class and accuracy.
USER_ARTIFACT_ACCURACY = (
    "import sys, torch\n"
    "from lightning_micro import load_compressed\n"
    "from lightning_micro.data import DigitsDataModule\n"
    "net = load_compressed(sys.argv[1], trusted=['tests.helpers.user_modules', 'tests.helpers.user_nets'])"
    "  # the user's own classes, trusted by name\n"
    "dm = DigitsDataModule(); dm.setup('test')\n"
    "x, y = dm.test_set.tensors\n"
    "with torch.no_grad(): print(type(net).__name__, (net(x).argmax(1) == y).float().mean().item())\n"
)


def fresh_process_accuracy(artifact: Path) -> float:
    """The accuracy of a zoo network's artifact, loaded in a fresh process."""
    out = subprocess.run([sys.executable, "-c", ZOO_ARTIFACT_ACCURACY, str(artifact)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout)
