"""The model zoo: sizes from the literature, shape checks, and one fast_dev_run per model through train()."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_micro.models import (
    LeNet5,
    LeNet300,
    MobileNet,
    MobileNetV2,
    ResNet20,
    ShuffleNet,
    VisionTransformer,
    torchvision_mobilenet_v3_small,
)
from lightning_micro.models.shufflenet import channel_shuffle
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


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)  # groups [0 1 2] [3 4 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shufflenet_adds_back_at_stride_1_and_concatenates_the_pooled_input_at_stride_2():
    net = ShuffleNet([1, 28, 28], 10, groups=3, stage_channels=[60, 120, 240], stage_repeats=[2, 4, 2])
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10) and n_params(net) == 31_876
    unit = net.units[1].eval()  # stride 1: its branch plus the identity
    x = torch.randn(2, 60, 14, 14)
    with torch.no_grad():
        branch = unit.expand(unit.depthwise(channel_shuffle(unit.reduce(x), 3)))
        assert torch.allclose(unit(x), torch.relu(x + branch))
    assert [u.reduce[0].groups for u in net.units[:2]] == [1, 3]  # the first unit reads the narrow stem whole


def test_the_vision_transformer_reads_its_head_count_from_qkv():
    net = VisionTransformer([1, 28, 28], 10, patch_size=4, dim=32, depth=2, num_heads=4, mlp_dim=64).eval()
    x = torch.randn(2, 1, 28, 28)
    attn = net.blocks[0].attn
    tokens = torch.randn(2, 49, 32)
    with torch.no_grad():  # the same computation as torch's own multi-head attention with these weights
        mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.load_state_dict(attn.proj.state_dict())
        torch.testing.assert_close(attn(tokens), mha(tokens, tokens, tokens, need_weights=False)[0], rtol=1e-5,
                                   atol=1e-5)
    assert net(x).shape == (2, 10) and n_params(VisionTransformer()) == 205_834


def test_torchvision_mobilenet_v3_small_takes_the_datas_channels():
    net = torchvision_mobilenet_v3_small([1, 32, 32], 10)
    assert net.features[0][0].in_channels == 1 and net.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert n_params(net) == 1_527_818


@pytest.mark.parametrize(
    ("net", "message"),
    [
        (lambda: LeNet300([3, 32, 32], 10), "single-channel"),
        (lambda: LeNet5([1, 8, 8], 10), "at least 16x16"),
        (lambda: MobileNet([1, 28, 28], 10, width_multiplier=0), "width_multiplier"),
        (lambda: ResNet20([3, 32, 32], 10, blocks_per_stage=0), "blocks_per_stage"),
        (lambda: MobileNetV2([1, 28, 28], 10, stages=[[6, 24, 2, 3]]), "stride 1 or 2"),
        (lambda: ShuffleNet([1, 28, 28], 10, groups=3, stage_channels=[48, 96, 200]), "multiples of 4 \\* groups"),
        (lambda: VisionTransformer([1, 28, 28], 10, patch_size=5), "patch_size"),
        (lambda: VisionTransformer([1, 28, 28], 10, dim=60, num_heads=8), "multiple of num_heads"),
    ],
)
def test_bad_shapes_and_sizes_raise(net, message):
    with pytest.raises(ValueError, match=message):
        net()


@pytest.mark.parametrize(
    ("model", "data"), [("lenet300", "digits"), ("lenet5", "mnist"), ("mobilenet", "digits"), ("mobilenetv2", "digits"),
                        ("resnet20", "digits"), ("vit_tiny", "digits")]  # shufflenet, tv_mobilenet_v3_small: recipes
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


@pytest.mark.parametrize("model", ["lenet300", "mobilenet", "mobilenetv2", "resnet20", "shufflenet", "vit_tiny"])
@pytest.mark.parametrize("compression", [["compression=tt"], ["compression=lowrank"], ["compression=structured"],
                                         ["compression=layerdrop"]], ids=["tt", "lowrank", "structured", "layerdrop"])
def test_every_model_takes_the_structural_techniques_with_their_defaults(model, compression, tmp_path):
    cfg = compose_cfg([*FAST, f"model={model}", *compression, "debug=fdr"], tmp_path)
    if compression == ["compression=layerdrop"] and model == "lenet300":  # no block at all (MobileNet: two that keep
        # their shape in its Sequential)
        with pytest.raises(ConfigError, match="has no droppable block"):
            train(cfg)
        return
    if compression == ["compression=tt"] and model in ("mobilenet", "mobilenetv2", "resnet20", "shufflenet"):
        # their only Linear is the classifier, which the defaults leave alone
        with pytest.raises(ConfigError, match=r"compression.tt: TTLayerSwap: no selected layer can be swapped: "
                                              r"(classifier|fc): the output layer \(name it in include"):
            train(cfg)
        return
    if compression == ["compression=structured"] and model == "shufflenet":
        # every channel passes through a grouped pointwise convolution, whose channels stay: refused, layers named
        with pytest.raises(ConfigError, match=r"compression.structured: include: pattern '\*' selects stem.0, whose "
                                              r"channels cannot be removed consistently: it couples units.7.expand.0 "
                                              r"\(Conv2d, groups=3\), .* and \d+ more, whose channels"):
            train(cfg)
        return
    train(cfg)
    report = json.loads((tmp_path / "compression_report.json").read_text())
    # swapped, thinned or made shallower
    assert any(key.startswith(("tt/", "lowrank/", "structured/kept/")) for key in report) or report.get(
        "layerdrop/removed", 0) > 0
    assert report["params/total"] < n_params(instantiate(cfg.model.net, "model.net"))
