"""The model zoo: sizes from the literature, shape checks, and one fast_dev_run per model through train()."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_micro.models import LeNet5, LeNet300, MobileNet, MobileNetV2, ResNet20
from lightning_micro.run.instantiate import ConfigError, instantiate
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg, mnist_dir


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts_match_the_literature():
    assert n_params(LeNet300([1, 28, 28], 10)) == 266_610  # Han et al. 2015: 267K
    assert n_params(LeNet5([1, 28, 28], 10)) == 431_080  # Han et al. 2015: 431K
    assert 0.26e6 < n_params(ResNet20([3, 32, 32], 10)) < 0.28e6  # He et al. 2016: 0.27M


def test_mobilenetv2_adds_the_input_back_only_where_a_block_keeps_its_shape():
    from lightning_micro.models.mobilenet_v2 import InvertedResidual

    net = MobileNetV2([1, 28, 28], 10, width_multiplier=0.5)
    blocks = [m for m in net.features if isinstance(m, InvertedResidual)]
    assert [b.residual for b in blocks] == [False, False, True, False, True, True, False, True, True, True, False,
                                           True, True]
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    block = blocks[2]  # with the residual, the block is its branch plus the identity
    x = torch.randn(2, block.conv[0][0].in_channels, 14, 14)
    with torch.no_grad():
        assert torch.allclose(block.eval()(x), x + block.conv(x))


def test_mobilenet_width_multiplier_thins_every_layer():
    wide, thin = MobileNet([3, 32, 32], 10, 1.0), MobileNet([3, 32, 32], 10, 0.5)
    assert n_params(thin) < n_params(wide) / 3
    assert thin(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("net", "message"),
    [
        (lambda: LeNet300([3, 32, 32], 10), "single-channel"),
        (lambda: LeNet5([1, 8, 8], 10), "at least 16x16"),
        (lambda: MobileNet([1, 28, 28], 10, width_multiplier=0), "width_multiplier"),
        (lambda: ResNet20([3, 32, 32], 10, blocks_per_stage=0), "blocks_per_stage"),
        (lambda: MobileNetV2([1, 28, 28], 10, stages=[[6, 24, 2, 3]]), "stride 1 or 2"),
    ],
)
def test_bad_shapes_and_sizes_raise(net, message):
    with pytest.raises(ValueError, match=message):
        net()


@pytest.mark.parametrize(
    ("model", "data"), [("lenet300", "digits"), ("lenet5", "mnist"), ("mobilenet", "digits"), ("mobilenetv2", "digits"),
                        ("resnet20", "digits")]
)
def test_fast_dev_run(model, data, tmp_path):
    if data == "mnist":
        mnist_dir()
    # The default compression, [gmp, qat]: every model of the zoo is pruned and converted to int8.
    cfg = compose_cfg([*FAST, f"model={model}", f"data={data}", "debug=fdr"], tmp_path)
    metrics = train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert report["quant/weight_bits"] == 8
    net = instantiate(cfg.model.net, "model.net")
    # Each BatchNorm folds into its convolution: its weight and bias go, the convolution gains a bias.
    folded = sum(m.num_features for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert report["params/total"] == n_params(net) - folded
    assert report["size/artifact_bytes"] == (tmp_path / "model.safetensors").stat().st_size


@pytest.mark.parametrize("model", ["lenet300", "mobilenet", "mobilenetv2", "resnet20"])
@pytest.mark.parametrize("compression", [["compression=tt"], ["compression=lowrank"], ["compression=structured"],
                                         ["compression=layerdrop"]], ids=["tt", "lowrank", "structured", "layerdrop"])
def test_every_model_takes_the_structural_techniques_with_their_defaults(model, compression, tmp_path):
    cfg = compose_cfg([*FAST, f"model={model}", *compression, "debug=fdr"], tmp_path)
    if compression == ["compression=layerdrop"] and model == "lenet300":  # no block at all (MobileNet: two that keep
        # their shape in its Sequential)
        with pytest.raises(ConfigError, match="has no droppable block"):
            train(cfg)
        return
    train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    # swapped, thinned or made shallower
    assert any(key.startswith(("tt/", "lowrank/", "structured/kept/")) for key in report) or report.get(
        "layerdrop/removed", 0) > 0
    assert report["params/total"] < n_params(instantiate(cfg.model.net, "model.net"))
