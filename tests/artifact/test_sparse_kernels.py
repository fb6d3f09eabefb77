"""Sparse kernels through the artifact: the export's choice is recorded in the file and replayed on load, forced
with ``never``/``always``, a fresh process without the training stack loads and runs the CSR layers, and the ONNX
export of such an artifact is the dense graph with equal outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_micro.artifact.format import ArtifactError, load_compressed, read_metadata, save_compressed
from lightning_micro.artifact.onnx import OnnxRuntimeNet, export_onnx
from lightning_micro.core.sparse_kernels import SparseLinear
from lightning_micro.models import LeNet300

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}
CHOICE = {"fc1": {"1": "dense", "64": "csr"}, "fc2": {"1": "csr", "64": "csr"}}
TRAINING_STACK = ("lightning", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf")


@pytest.fixture(scope="module")
def pruned() -> nn.Module:
    torch.manual_seed(0)
    net = LeNet300([1, 8, 8]).eval()
    with torch.no_grad():
        for layer in (net.fc1, net.fc2):
            layer.weight[torch.rand_like(layer.weight) < 0.9] = 0
    return net


@pytest.fixture()
def artifact(pruned, tmp_path) -> Path:
    path = tmp_path / "model.safetensors"
    save_compressed(pruned, SPEC, path, codecs={"fc1.weight": "bitmask", "fc2.weight": "bitmask"}, kernels=CHOICE)
    return path


def kernels_of(net: nn.Module) -> dict[str, dict[int, str]]:
    return {name: dict(m.kernels) for name, m in net.named_modules() if isinstance(m, SparseLinear)}


def test_the_choice_is_recorded_and_replayed_on_load(pruned, artifact):
    assert read_metadata(artifact)["kernels"] == CHOICE
    net = load_compressed(artifact)
    assert kernels_of(net) == {"fc1": {1: "dense", 64: "csr"}, "fc2": {1: "csr", 64: "csr"}}
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), pruned(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(x[:1]), pruned(x[:1]), rtol=1e-5, atol=1e-5)


def test_never_and_always_override_the_record(artifact):
    assert kernels_of(load_compressed(artifact, sparse_kernels="never")) == {}
    always = kernels_of(load_compressed(artifact, sparse_kernels="always"))
    assert always == {name: {1: "csr", 64: "csr"} for name in ("fc1", "fc2")}  # fc3 has no zero: stays dense
    with pytest.raises(ValueError, match="sparse_kernels must be one of"):
        load_compressed(artifact, sparse_kernels="fast")


def test_a_record_naming_a_missing_layer_is_refused(pruned, tmp_path):
    path = tmp_path / "odd.safetensors"
    save_compressed(pruned, SPEC, path, kernels={"fc9": {"1": "csr"}})
    with pytest.raises(ArtifactError, match="fc9"):
        load_compressed(path)


def test_a_fresh_process_without_the_training_stack_runs_the_csr_layers(pruned, artifact):
    script = (
        "import json, sys, torch\n"
        "from lightning_micro import load_compressed\n"
        "from lightning_micro.core.sparse_kernels import SparseLinear\n"
        "net = load_compressed(sys.argv[1])\n"
        "torch.manual_seed(1)\n"
        "x = torch.randn(64, 1, 8, 8)\n"
        "with torch.no_grad(): out = net(x)\n"
        f"print(json.dumps({{'loaded': sorted(m for m in {TRAINING_STACK!r} if m in sys.modules),"
        " 'sparse': sorted(n for n, m in net.named_modules() if isinstance(m, SparseLinear)),"
        " 'out': out.tolist()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(artifact)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [] and result["sparse"] == ["fc1", "fc2"]
    torch.manual_seed(1)
    with torch.no_grad():
        expected = pruned(torch.randn(64, 1, 8, 8))
    torch.testing.assert_close(torch.tensor(result["out"]), expected, rtol=1e-5, atol=1e-5)


def test_the_onnx_export_of_a_sparse_artifact_is_dense_with_equal_outputs(pruned, artifact, tmp_path):
    path = export_onnx(artifact, tmp_path / "model.onnx")
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(OnnxRuntimeNet(path)(x), pruned(x), rtol=1e-4, atol=1e-4)
