"""A deployed network loads with torch and safetensors alone: ``load_compressed`` of a zoo artifact, of a user
module's artifact (its spec names a plain network factory) and of an int8 artifact, each in a fresh process,
leaves no Lightning, torchmetrics, Hydra or omegaconf in ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L

from lightning_micro.artifact.format import save_compressed
from lightning_micro.callbacks import GradualMagnitudePruning, QuantizationAwareTraining
from lightning_micro.contract import export_compressed
from lightning_micro.data import DigitsDataModule
from lightning_micro.models import LeNet300
from tests.helpers.fitting import trainer_for
from tests.helpers.user_modules import FactoryNamed

ROOT = Path(__file__).resolve().parents[2]
TRAINING_STACK = ("lightning", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf")
LOAD = (
    "import json, sys, torch\n"
    "from lightning_micro import load_compressed\n"
    "net = load_compressed(sys.argv[1], trusted=['tests.helpers.user_nets'])\n"
    "with torch.no_grad(): out = net(torch.zeros(2, *json.loads(sys.argv[2])))\n"
    f"print(json.dumps({{'loaded': sorted(m for m in {TRAINING_STACK!r} if m in sys.modules),"
    " 'shape': list(out.shape), 'net': type(net).__name__}))\n"
)


def load_in_a_fresh_process(path: Path, input_shape: list[int]) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD, str(path), json.dumps(input_shape)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def user_artifact(tmp_path: Path, technique: L.Callback, name: str) -> Path:
    L.seed_everything(0)
    trainer = trainer_for(tmp_path, [technique], max_epochs=2, enable_checkpointing=False, limit_train_batches=6,
                          limit_val_batches=0)
    module = FactoryNamed()
    trainer.fit(module, DigitsDataModule(batch_size=64))
    path = tmp_path / f"{name}.safetensors"
    export_compressed(trainer, path, module)
    return path


def test_a_zoo_artifact_loads_without_the_training_stack(tmp_path):
    path = tmp_path / "zoo.safetensors"
    save_compressed(LeNet300([1, 8, 8]), {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]},
                    path)
    assert load_in_a_fresh_process(path, [1, 8, 8]) == {"loaded": [], "shape": [2, 10], "net": "LeNet300"}


def test_a_user_modules_artifact_loads_without_the_training_stack(tmp_path):
    path = user_artifact(tmp_path, GradualMagnitudePruning(final_sparsity=0.5, start=0, end=1, update_every=2), "gmp")
    result = load_in_a_fresh_process(path, [1, 8, 8])
    assert result == {"loaded": [], "shape": [2, 10], "net": "ResidualDepthwiseNet"}


def test_an_int8_artifact_loads_without_the_training_stack(tmp_path):
    path = user_artifact(tmp_path, QuantizationAwareTraining(start=1), "int8")
    result = load_in_a_fresh_process(path, [1, 8, 8])
    assert result["loaded"] == [] and result["shape"] == [2, 10]
    assert result["net"] == "GraphModule"  # torch.ao's integer graph, rebuilt from the record
