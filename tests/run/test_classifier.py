"""ClassifierModule: eager checks, and checkpoints that rebuild the module on their own."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError

NET = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8], "num_classes": 10}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}


def test_negative_learning_rate_fails_at_construction():
    with pytest.raises(ConfigError, match=r"^optimizer: torch\.optim\.SGD\(lr=-0\.1\) rejected its arguments: "
                                          r"Invalid learning rate"):
        ClassifierModule(NET, {**SGD, "lr": -0.1}, input_shape=[1, 8, 8])


def test_wrong_number_of_classes_fails_at_construction():
    with pytest.raises(ConfigError, match=r"^net: .*expected \(2, 7\)"):
        ClassifierModule(NET, SGD, input_shape=[1, 8, 8], num_classes=7)


def test_input_shape_the_net_cannot_take_fails_at_construction():
    with pytest.raises(ConfigError, match=r"^net: LeNet300 cannot take images of input_shape \[1, 9, 9\]"):
        ClassifierModule(NET, SGD, input_shape=[1, 9, 9])


def test_checkpoint_rebuilds_without_arguments(tmp_path):
    torch.manual_seed(0)
    module = ClassifierModule(NET, SGD, input_shape=[1, 8, 8])
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=8))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = ClassifierModule.load_from_checkpoint(tmp_path / "m.ckpt")
    x = torch.randn(4, 1, 8, 8)
    module.eval()
    restored.eval()
    assert torch.equal(module(x), restored(x))
    assert restored.net_spec == NET


def test_objects_work_too():
    from functools import partial

    from lightning_micro.models import LeNet300

    module = ClassifierModule(LeNet300([1, 8, 8]), partial(torch.optim.Adam, lr=1e-3), input_shape=[1, 8, 8])
    assert module.net_spec is None
    assert isinstance(module.configure_optimizers(), torch.optim.Adam)
