"""One small layer does not refuse a whole technique: a layer a wildcard selected whose compression_ratio is out
of reach (a 1-channel stem) is left dense and named in the log and the report, and the other layers are swapped;
the same layer named exactly by ``include`` is refused before the first step, as is a selection where no layer
can gain."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lightning_micro import load_compressed
from lightning_micro.callbacks import LowRankDecomposition
from lightning_micro.contract import export_compressed
from lightning_micro.core.low_rank import LowRankLinear, TuckerConv2d
from lightning_micro.data import DigitsDataModule
from tests.helpers.fitting import trainer_for
from tests.helpers.user_modules import FactoryNamed
from tests.helpers.user_nets import ResidualDepthwiseNet

STEM = "LowRankDecomposition on stem.0 (Conv2d, tucker2): compression_ratio=6 is out of reach for this layer even " \
       "at rank 1 (5.5x)"
OUTPUT = "the output layer (name it in include, or set keep_output_layer false, to swap it)"


def test_a_layer_out_of_reach_is_left_dense_and_named_and_the_others_swap(tmp_path, caplog):
    lowrank = LowRankDecomposition(swap_at=1, compression_ratio=6)
    L.seed_everything(0)
    trainer = trainer_for(tmp_path, [lowrank], max_epochs=2, enable_checkpointing=False, limit_train_batches=6,
                          limit_val_batches=0)
    module = FactoryNamed()
    with caplog.at_level("INFO"):
        trainer.fit(module, DigitsDataModule(batch_size=64))
    # the case: the defaults used to factorize all of them, the 1-channel stem and the classifier too
    assert lowrank.left_out == {"stem.0": STEM, "fc2": OUTPUT} and lowrank.layers == ["pointwise", "fc1"]
    assert f"left out stem.0: {STEM}" in caplog.text and f"left out fc2: {OUTPUT}" in caplog.text
    net = module.backbone
    assert type(net.stem[0]) is nn.Conv2d and isinstance(net.pointwise, TuckerConv2d)
    assert type(net.fc2) is nn.Linear
    assert isinstance(net.fc1, LowRankLinear) and lowrank.report_fields(net)["lowrank/left_out"] == "stem.0, fc2"
    path = tmp_path / "model.safetensors"
    export_compressed(trainer, path, module)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_compressed(path, trusted=[ResidualDepthwiseNet])(x), net.eval()(x), atol=1e-6)


def test_the_layer_named_exactly_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"^LowRankDecomposition on stem.0 \(Conv2d, tucker2\): compression_ratio=6 "
                                         r"is out of reach"):
        LowRankDecomposition(swap_at=1, compression_ratio=6, include=["stem.0"]).check_model(ResidualDepthwiseNet())


def test_a_selection_where_no_layer_can_gain_is_refused_naming_each():
    with pytest.raises(ValueError, match=r"LowRankDecomposition: no selected layer can be swapped: .*stem.0.*out of "
                                         r"reach.*fc2 \(Linear, svd\): compression_ratio=100 is out of reach"):
        LowRankDecomposition(swap_at=1, compression_ratio=100).check_model(ResidualDepthwiseNet())


def test_the_output_layer_is_swapped_when_named_or_asked_for():
    net = ResidualDepthwiseNet()
    x = torch.zeros(1, 1, 8, 8)
    named = LowRankDecomposition(swap_at=1, compression_ratio=2, include=["fc*"])
    named.check_model(net, x)
    assert "fc2" not in named.layers  # a wildcard, even a narrower one, leaves it
    for asked in (LowRankDecomposition(swap_at=1, compression_ratio=2, include=["fc1", "fc2"]),
                  LowRankDecomposition(swap_at=1, compression_ratio=2, keep_output_layer=False)):
        asked.check_model(net, x)
        assert "fc2" in asked.layers and "fc2" not in asked.left_out
