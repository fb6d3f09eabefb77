"""Droppable blocks found in the zoo and in a user's network, the drop and removal rules, skipping and removal."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_micro.core import block_removal
from lightning_micro.models import LeNet300
from lightning_micro.models.mobilenet_v2 import InvertedResidual, MobileNetV2
from lightning_micro.models.resnet import ResNet20
from tests.helpers.user_nets import ResidualStack

X8 = torch.randn(2, 1, 8, 8)
X28 = torch.randn(2, 1, 28, 28)


def test_residual_blocks_that_keep_their_shape_are_found_in_the_zoo():
    resnet = ResNet20([1, 28, 28], 10)
    # the first block of stages 2 and 3 downsamples through a projection shortcut: not droppable
    assert block_removal.droppable_blocks(resnet, X28) == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2",
                                                   "layer3.1", "layer3.2"]
    mobilenet = MobileNetV2([1, 28, 28], 10, width_multiplier=0.5)
    residual = [f"features.{i}" for i, m in enumerate(mobilenet.features)
                if isinstance(m, InvertedResidual) and m.residual]
    assert block_removal.droppable_blocks(mobilenet, X28) == residual and len(residual) == 8
    assert block_removal.droppable_blocks(LeNet300([1, 8, 8]), X8) == []


def test_a_users_blocks_are_found_by_tracing_and_a_declaration_overrides_it():
    net = ResidualStack(width=8, depth=3)
    assert block_removal.droppable_blocks(net, X8) == ["blocks.0", "blocks.1", "blocks.2"]
    net.blocks[1].droppable = False  # declared by the model
    assert block_removal.droppable_blocks(net, X8) == ["blocks.0", "blocks.2"]

    class NotResidual(nn.Module):  # same shape out as in, but nothing adds the input back
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x) + 1)

    class Holder(nn.Module):  # not a sequence either (see the next test)
        def __init__(self) -> None:
            super().__init__()
            self.block = NotResidual()

        def forward(self, x):
            return self.block(x).flatten(1)

    plain = Holder()
    assert block_removal.droppable_blocks(plain, X8) == []
    plain.block.droppable = True
    assert block_removal.droppable_blocks(plain, X8) == ["block"]
    # in a sequence, a block that keeps its shape is offered when the network has no residual block
    assert block_removal.droppable_blocks(nn.Sequential(NotResidual(), nn.Flatten()), X8) == ["0"]


def test_named_blocks_must_keep_their_shape():
    resnet = ResNet20([1, 8, 8], 10, blocks_per_stage=2, widths=[8, 16, 16])
    assert block_removal.named_blocks(resnet, ["layer1.*", "layer3.1"], X8) == ["layer1.0", "layer1.1", "layer3.1"]
    with pytest.raises(ValueError, match=r"blocks: 'layer2.0' maps \[2, 8, 8, 8\] to \[2, 16, 4, 4\]; skipping it"):
        block_removal.named_blocks(resnet, ["layer2.0"], X8)
    assert block_removal.named_blocks(resnet, ["layer1", "layer1.0"], X8) == ["layer1"]  # the outermost: a whole stage
    with pytest.raises(ValueError, match="blocks: pattern 'stage9' matches no module of ResNet20"):
        block_removal.named_blocks(resnet, ["stage9"], X8)


def test_drop_probabilities_uniform_and_linear():
    assert block_removal.drop_probabilities(4, 0.4, "uniform") == [0.4] * 4
    assert block_removal.drop_probabilities(4, 0.4, "linear") == pytest.approx([0.1, 0.2, 0.3, 0.4])  # (l / L) p_L
    with pytest.raises(ValueError, match="rule must be one of"):
        block_removal.drop_probabilities(4, 0.4, "cubic")


def test_every_other_and_least_important():
    assert block_removal.every_other(8, 4) == [1, 3, 5, 7]  # LayerDrop's every other layer
    assert block_removal.every_other(6, 3) == [1, 3, 5]
    assert block_removal.every_other(7, 4) == [0, 2, 4, 6]
    assert block_removal.every_other(5, 1) == [2]
    assert block_removal.every_other(3, 3) == [0, 1, 2]
    assert block_removal.least_important({"a": 0.5, "b": 0.2, "c": 0.9, "d": 0.2}, 2) == ["b", "d"]


def test_skipping_runs_no_block_and_removal_gives_the_same_network():
    resnet = ResNet20([1, 8, 8], 10, blocks_per_stage=2, widths=[8, 16, 16]).eval()
    calls = []
    resnet.layer1[1].conv1.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        full = resnet(X8)
        assert len(calls) == 1
        with block_removal.skipping(resnet, ["layer1.1", "layer3.1"]):
            skipped = resnet(X8)
        assert len(calls) == 1  # the skipped block did not run
        assert not torch.allclose(skipped, full)
        assert torch.allclose(resnet(X8), full)  # restored
        shallow = block_removal.remove_blocks(copy.deepcopy(resnet), ["layer1.1", "layer3.1"])
        assert isinstance(shallow.layer1[1], nn.Identity) and isinstance(shallow.layer3[1], nn.Identity)
        assert torch.equal(shallow(X8), skipped)


def test_droppable_blocks_follow_their_factor_in_training_and_run_in_eval():
    net = ResidualStack(width=4, depth=2)
    block = net.blocks[0]
    block_removal.make_droppable(net, ["blocks.0", "blocks.1"])
    x = torch.randn(3, 4, 8, 8)
    expected = type(block).forward(block.eval(), x)
    block.train()
    block_removal.set_drop_factors(net, {"blocks.0": 0.0, "blocks.1": 2.0})
    assert torch.equal(block(x), x)  # skipped: the input passes
    assert torch.allclose(net.blocks[1](x), x + 2.0 * (type(block).forward(net.blocks[1], x) - x))  # rescaled
    net.eval()
    assert torch.allclose(block(x), expected)  # eval runs the block as written, whatever its factor
    net.train()
    clone = copy.deepcopy(net)  # a deep copy's blocks read their own factors
    block_removal.set_drop_factors(clone, {"blocks.0": 1.0})
    assert torch.equal(block(x), x) and not torch.equal(clone.blocks[0](x), x)
    block_removal.undo_droppable(net, ["blocks.0", "blocks.1"])
    block.eval()
    assert "forward" not in block.__dict__ and torch.equal(block(x), type(block).forward(block, x))


def test_a_skipped_block_can_still_run_so_that_every_parameter_gets_a_gradient():
    net = ResidualStack(width=4, depth=1)
    block_removal.make_droppable(net, ["blocks.0"], compute_skipped=True)
    block_removal.set_drop_factors(net, {"blocks.0": 0.0})
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    out = net.blocks[0](x)
    assert torch.equal(out, x)
    out.sum().backward()
    grad = net.blocks[0].body[2].weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0  # in the graph (DDP), with no effect


def test_a_network_without_residual_blocks_offers_the_shape_preserving_blocks_of_its_sequences():
    # a pre-norm transformer: each encoder layer adds two residuals in one forward, which tracing does not take as
    # "x + f(x)"; torch's encoder reads its first layer's attention itself, so that one stays
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 4, enable_nested_tensor=False))
    tokens = torch.randn(2, 8, 8)
    assert block_removal.droppable_blocks(encoder, tokens) == ["1.layers.1", "1.layers.2", "1.layers.3"]
    # a residual block anywhere keeps today's rule: only residual blocks
    assert block_removal.droppable_blocks(ResidualStack(width=8, depth=3), X8) == ["blocks.0", "blocks.1", "blocks.2"]
    # bare layers (no children of their own) are not blocks
    assert block_removal.droppable_blocks(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)),
                                          torch.randn(2, 8)) == []


def test_a_removed_encoder_layer_passes_its_input_through_the_masks_torch_hands_it():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
    encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    tokens = torch.randn(2, 5, 16)
    with torch.no_grad():
        with block_removal.skipping(encoder, ["layers.1"]):
            expected = encoder(tokens)
        removed = block_removal.remove_blocks(copy.deepcopy(encoder), ["layers.1"])
        assert isinstance(removed.layers[1], nn.Identity)
        assert torch.allclose(removed(tokens), expected)
        assert torch.allclose(removed(tokens, mask=torch.zeros(5, 5)), expected, atol=1e-5)  # masks reach every layer
