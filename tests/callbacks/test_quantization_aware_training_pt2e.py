"""QuantizationAwareTraining with ``backend="pt2e"`` (torchao's PT2E flow): the run trains, converts and exports a
network that reloads with the same outputs; it composes with pruning and takes a user's LightningModule; where
torch.ao's FX flow is gone, the torch.ao backends fall back to it, saying so. (Its exact resume mid-QAT is a case of
test_quantization_aware_training's resume test.)"""

from __future__ import annotations

import sys

import lightning as L
import pytest
import torch
from torch import nn

from lightning_micro import export_compressed
from lightning_micro.artifact.format import load_compressed, read_metadata
from lightning_micro.callbacks import GradualMagnitudePruning, QuantizationAwareTraining
from lightning_micro.core import int8_pt2e
from lightning_micro.data import DigitsDataModule
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg
from tests.helpers.fitting import COSINE, NET, SGD, trainer_for
from tests.helpers.fresh_process import fresh_process_accuracy
from tests.helpers.user_modules import DigitsClassifier


def _fit_and_export(tmp_path, callbacks, module=None, **trainer_args):
    L.seed_everything(0)
    module = module if module is not None else ClassifierModule(NET, SGD, COSINE, input_shape=[1, 8, 8])
    trainer = trainer_for(tmp_path, callbacks, **{"max_epochs": 3, "enable_checkpointing": False,
                                                  "limit_val_batches": 0, **trainer_args})
    trainer.fit(module, DigitsDataModule(batch_size=64))
    path = tmp_path / "model.safetensors"
    assert export_compressed(trainer, path) == path.stat().st_size
    return module, path


def test_run_with_pt2e_converts_and_its_artifact_scores_the_same_in_a_fresh_process(tmp_path):
    cfg = compose_cfg([*FAST, "trainer.max_epochs=3", "compression=qat", "compression.qat.start=1",
                       "compression.qat.backend=pt2e"], tmp_path)
    metrics = train(cfg)
    artifact = tmp_path / "model.safetensors"
    meta = read_metadata(artifact)
    assert [e["transform"] for e in meta["transforms"]] == ["int8_qat_prepare", "int8_convert"]
    assert meta["transforms"][0]["args"]["backend"] == "pt2e"
    assert metrics["test/acc"] > 0.8
    assert fresh_process_accuracy(artifact) == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_pt2e_artifact_holds_int8_weights_and_reloads_with_the_same_outputs(tmp_path):
    module, path = _fit_and_export(tmp_path, [QuantizationAwareTraining(start=1, backend="pt2e")])
    net = load_compressed(path)
    assert isinstance(net, int8_pt2e.ExportedNet) and not net.training
    state = net.state_dict()
    weights = [v for k, v in state.items() if "_frozen_param" in k]
    assert len(weights) == 3 and all(w.dtype == torch.int8 for w in weights)  # fc1..fc3, fp32 copies dropped
    assert not any(k.endswith(".weight") for k in state)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), module.net(x))
        data = DigitsDataModule()
        data.setup("test")
        digits = data.test_set.tensors[0]
        compiled = int8_pt2e.compile_for_cpu(net)(digits)  # oneDNN kernels: requantization rounds differently
        assert (compiled.argmax(1) == net(digits).argmax(1)).float().mean() >= 0.98


def test_pt2e_composes_with_pruning_and_pruned_weights_stay_zero(tmp_path):
    pruning = GradualMagnitudePruning(final_sparsity=0.8, start=0, end=1, update_every=5)
    qat = QuantizationAwareTraining(start=2, backend="pt2e")
    module, path = _fit_and_export(tmp_path, [pruning, qat])
    assert qat.layers == ["fc1", "fc2", "fc3"]  # the exported graph's layers keep their names and types
    assert pruning.pruned_fraction() == pytest.approx(0.8, abs=1e-3)
    codes = [v for k, v in load_compressed(path).state_dict().items() if "_frozen_param" in k]
    zeros, total = sum(int((c == 0).sum()) for c in codes), sum(c.numel() for c in codes)
    assert zeros >= 0.8 * total  # every pruned weight is a zero code (a few unpruned ones round to zero too)
    assert path.stat().st_size < 0.5 * total  # the int8 codes are stored sparse


class PlainConvNet(nn.Module):
    def __init__(self, width: int = 8, batch_norm: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width) if batch_norm else
                                  nn.Identity(), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.stem(x), 1))


class UserConvClassifier(DigitsClassifier):
    """A user's module around a conv(-bn)-relu network, which X86InductorQuantizer takes."""

    def __init__(self, width: int = 8, lr: float = 5e-3, batch_norm: bool = False) -> None:
        super().__init__(width, lr)
        self.backbone = PlainConvNet(width, batch_norm)


def test_user_module_takes_pt2e_and_its_artifact_gives_the_same_outputs(tmp_path):
    module, path = _fit_and_export(tmp_path, [QuantizationAwareTraining(start=1, backend="pt2e")],
                                   UserConvClassifier())
    net = load_compressed(path, trusted=[__name__])
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x), module.compressed_net(x))


def test_pt2e_freezes_the_batch_norm_statistics_of_a_users_network():
    """freeze_bn on the exported graph (the backend calls QAT's freeze_bn makes): the statistics move in training
    until frozen, then stay. Without Lightning, because a fit ends in the conversion, and converting a conv-bn network
    takes torchao about 20 s (twice for an artifact, which the test above spares by leaving BN out)."""
    from lightning_micro.core import int8_backend

    torch.manual_seed(0)
    net = int8_backend.prepare_qat(PlainConvNet(batch_norm=True), [1, 8, 8], backend="pt2e")
    assert isinstance(net, int8_pt2e.ExportedNet)

    def running_mean() -> torch.Tensor:
        return next(v.clone() for k, v in net.state_dict().items() if k.endswith("running_mean"))

    start = running_mean()
    net.train()
    net(torch.randn(16, 1, 8, 8))
    moved = running_mean()
    assert not torch.equal(moved, start)
    int8_backend.freeze_bn_stats(net, True)
    net.train()  # Lightning puts the network back in training mode every epoch: it must stay frozen
    net(torch.randn(16, 1, 8, 8) + 3)
    assert torch.equal(running_mean(), moved)
    int8_backend.freeze_bn_stats(net, False)
    net(torch.randn(16, 1, 8, 8) + 3)
    assert not torch.equal(running_mean(), moved)


def test_user_module_pt2e_cannot_take_fails_before_the_first_step(tmp_path):
    # Its residual conv-bn output feeds two nodes, which X86InductorQuantizer's annotation refuses (torchao 0.18).
    trainer = trainer_for(tmp_path, [QuantizationAwareTraining(start=2, backend="pt2e")], enable_checkpointing=False)
    with pytest.raises(ValueError, match="cannot be prepared by PT2E's X86InductorQuantizer.*use backend: x86"):
        trainer.fit(DigitsClassifier(), DigitsDataModule(batch_size=64))
    assert trainer.global_step == 0


def test_without_torch_ao_fx_the_x86_backend_falls_back_to_pt2e_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.ao.quantization.quantize_fx", None)  # import raises ImportError
    qat = QuantizationAwareTraining(start=1, backend="x86")
    with pytest.warns(UserWarning, match="falling back to backend 'pt2e'"):
        module, path = _fit_and_export(tmp_path, [qat])
    assert qat.kernel_backend == "pt2e"
    assert read_metadata(path)["transforms"][0]["args"]["backend"] == "pt2e"
    assert isinstance(load_compressed(path), int8_pt2e.ExportedNet)


def test_bad_backend_names_the_key_and_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match=r"backend must be one of \['x86', 'fbgemm', 'qnnpack', 'pt2e'\].*'arm'"):
        QuantizationAwareTraining(backend="arm")
    with pytest.raises(ValueError, match="backend 'pt2e' quantizes weights per channel and symmetric"):
        QuantizationAwareTraining(backend="pt2e", per_channel=False)
    cfg = compose_cfg([*FAST, "compression=qat", "compression.qat.backend=arm"], tmp_path)
    with pytest.raises(ConfigError, match="compression.qat: .*backend must be one of"):
        train(cfg)
