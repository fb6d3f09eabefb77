"""An artifact written before the package was laid out in floors (by ``make train`` at 7c9cb61: LeNet-300-100 on
digits, 90% pruned, int8) still loads, in a fresh process without the training stack, and computes what the
code that wrote it computed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"
ARTIFACT = DATA / "lenet300_gmp_int8_from_0.1.safetensors"
ROOT = Path(__file__).resolve().parents[2]


def test_an_artifact_of_the_previous_layout_loads_and_computes_the_same():
    script = (
        "import json, sys, torch\n"
        "from lightning_micro import load_compressed\n"
        "net = load_compressed(sys.argv[1])\n"
        "with torch.no_grad(): out = net(torch.linspace(0, 16, 128).reshape(2, 1, 8, 8))\n"
        "print(json.dumps({'logits': out.tolist(), 'lightning': 'lightning' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(ARTIFACT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = json.loads((DATA / "lenet300_gmp_int8_from_0.1.json").read_text())["logits"]
    assert not result["lightning"]
    assert torch.equal(torch.tensor(result["logits"]), torch.tensor(expected))
