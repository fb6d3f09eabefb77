"""Channel groups (Torch-Pruning's dependency graph), importance, masks and removal, as plain functions."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from lightning_micro.core import channels
from lightning_micro.models import LeNet5, MobileNet, ResNet20
from tests.helpers.user_nets import ResidualDepthwiseNet


class Fire(nn.Module):
    """SqueezeNet's Fire module: a squeeze 1x1 convolution, then two expand convolutions concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(1, 6, 1)
        self.expand1 = nn.Conv2d(6, 8, 1)
        self.expand3 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        x = torch.cat([torch.relu(self.expand1(x)), torch.relu(self.expand3(x))], 1)
        return self.head(x).mean([2, 3])


class Heads(nn.Module):
    """A fused qkv Linear reshaped into a head count written into the code, as timm's Attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 12)
        self.qkv = nn.Linear(12, 36)
        self.hidden = nn.Linear(12, 20)
        self.out = nn.Linear(20 + 12, 10)

    def forward(self, x):
        tokens = self.embed(x)  # [B, 4, 12]
        q, k, v = self.qkv(tokens).reshape(x.shape[0], 4, 3, 2, 6).permute(2, 0, 3, 1, 4)
        attended = torch.softmax(q @ k.transpose(-1, -2), -1) @ v  # [B, 2 heads, 4, 6]
        mixed = attended.transpose(1, 2).reshape(x.shape[0], 4, 12)
        return self.out(torch.cat([torch.relu(self.hidden(tokens)), mixed], -1)).mean(1)


NETS = {
    "fire_concat": (Fire, (1, 8, 8)),
    "lenet5": (lambda: LeNet5([1, 28, 28]), (1, 28, 28)),
    "resnet20": (lambda: ResNet20([1, 16, 16]), (1, 16, 16)),
    "mobilenet": (lambda: MobileNet([1, 16, 16], width_multiplier=0.5), (1, 16, 16)),
    "user_residual_depthwise": (lambda: ResidualDepthwiseNet(16), (1, 8, 8)),
}


def _randomized(net: nn.Module) -> nn.Module:
    """BatchNorm with non-trivial statistics and affine parameters, so a missed slice shows in the output."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def _group(groups: list[channels.ChannelGroup], name: str) -> channels.ChannelGroup:
    return next(g for g in groups if g.name == name)


def _masked_and_thin(net: nn.Module, groups, kept, x: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """The masked network's output on ``x`` and the thinner network the same choice of channels removes."""
    masked = copy.deepcopy(net)
    state = masked.state_dict()
    with torch.no_grad():
        for tensor_name, mask in channels.channel_masks(masked, groups, kept).items():
            state[tensor_name].mul_(mask)
        expected = masked(x)
    return expected, channels.remove_channels(copy.deepcopy(masked), channels.removal_plan(masked, groups, kept))


def test_residual_stages_are_one_group_each_with_every_layer_writing_and_reading_the_sum():
    groups = channels.channel_groups(ResNet20([1, 16, 16]), torch.zeros(1, 1, 16, 16))
    stream = _group(groups, "conv1")  # the stem and stage 1: identity shortcuts couple them all
    assert stream.producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    sides = {(m, s) for m, s, _, _ in stream.members}
    assert {("bn1", "out"), ("layer1.0.bn2", "out"), ("layer1.2.bn2", "out"), ("layer1.0.conv1", "in"),
            ("layer2.0.conv1", "in"), ("layer2.0.shortcut.0", "in")} <= sides
    stage2 = _group(groups, "layer2.0.conv2")  # the projection shortcut writes into stage 2's sum
    assert "layer2.0.shortcut.0" in stage2.producers and ("layer2.0.shortcut.1", "out") in {
        (m, s) for m, s, _, _ in stage2.members}
    inner = _group(groups, "layer1.0.conv1")  # a block's inner channels: conv1, bn1 and conv2's input
    assert {(m, s) for m, s, _, _ in inner.members} == {("layer1.0.conv1", "out"), ("layer1.0.bn1", "out"),
                                                        ("layer1.0.conv2", "in")}
    assert "fc" not in [g.name for g in groups]  # its outputs are the network's outputs
    assert len(groups) == 12 and not any(g.unsupported for g in groups)


def test_a_depthwise_convolution_shares_the_channels_of_the_layer_feeding_it():
    groups = channels.channel_groups(MobileNet([1, 16, 16], width_multiplier=0.5), torch.zeros(1, 1, 16, 16))
    stem = _group(groups, "features.0.0")
    members = {(m, s) for m, s, _, _ in stem.members}
    assert {("features.0.1", "out"), ("features.1.0.0", "out"), ("features.1.0.1", "out"),
            ("features.1.1.0", "in")} <= members


def test_a_flatten_maps_each_channel_to_its_block_of_input_features():
    groups = channels.channel_groups(LeNet5([1, 28, 28]), torch.zeros(1, 1, 28, 28))
    conv2 = _group(groups, "conv2")
    (fc1,) = [m for m in conv2.members if m[0] == "fc1"]
    assert fc1[1] == "in" and len(fc1[2]) == 800
    assert conv2.member_indices([1])[("fc1", "in")] == list(range(16, 32))  # channel 1: features 16..31


def test_a_grouped_convolution_is_reported_as_unsupported():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    groups = channels.channel_groups(net, torch.zeros(1, 1, 8, 8))
    assert any("1 (Conv2d, groups=2)" in g.unsupported for g in groups), [g.unsupported for g in groups]


@pytest.mark.parametrize("name", NETS)
def test_the_thinner_network_computes_what_the_masked_network_computed(name):
    torch.manual_seed(0)
    make, shape = NETS[name]
    net = _randomized(make())
    x = torch.randn(4, *shape)
    groups = channels.channel_groups(net, x[:1])
    generator = torch.Generator().manual_seed(1)
    kept = [sorted(torch.randperm(g.size, generator=generator)[: max(1, g.size // 3)].tolist()) for g in groups]
    expected, thin = _masked_and_thin(net, groups, kept, x)
    with torch.no_grad():
        assert torch.allclose(thin(x), expected, atol=1e-5)
    assert sum(p.numel() for p in thin.parameters()) < 0.5 * sum(p.numel() for p in net.parameters())
    with torch.no_grad():  # masking changed the output: the test is not vacuous
        assert not torch.allclose(net(x), expected, atol=1e-3)


def test_removal_sets_module_sizes_and_the_depthwise_groups():
    net = ResidualDepthwiseNet(16)
    groups = channels.channel_groups(net, torch.zeros(1, 1, 8, 8))
    kept = [list(range(0, g.size, 2)) for g in groups]
    thin = channels.remove_channels(net, channels.removal_plan(net, groups, kept))
    assert (thin.depthwise.in_channels, thin.depthwise.out_channels, thin.depthwise.groups) == (8, 8, 8)
    assert thin.stem[1].num_features == 8 and thin.stem[1].running_mean.shape == (8,)
    assert (thin.fc1.in_features, thin.fc1.out_features, thin.fc2.in_features) == (128, 32, 32)


def test_l1_importance_is_the_norm_of_each_filter_summed_over_the_layers_writing_it():
    net = ResNet20([1, 16, 16])
    groups = channels.channel_groups(net, torch.zeros(1, 1, 16, 16))
    stream = _group(groups, "conv1")
    expected = sum(net.get_submodule(p).weight.detach().abs().sum((1, 2, 3)).double() for p in stream.producers)
    assert torch.allclose(channels.channel_importance(net, stream, "l1"), expected)
    expected_l2 = sum(net.get_submodule(p).weight.detach().pow(2).sum((1, 2, 3)).double() for p in stream.producers)
    assert torch.allclose(channels.channel_importance(net, stream, "l2"), expected_l2.sqrt())
    net.bn1.weight.data = torch.linspace(-1, 1, 16)
    scales = sum(net.get_submodule(n).weight.detach().abs().double() for n in
                 ("bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"))
    assert torch.allclose(channels.channel_importance(net, stream, "bn_scale"), scales)


def test_kept_counts_round_to_a_multiple_and_respect_the_minimum():
    assert channels.kept_count(50, 0.65, 1, 8) == 16
    assert channels.kept_count(20, 0.7, 1, 1) == 6
    assert channels.kept_count(20, 0.99, 1, 8) == 8  # at least one multiple
    assert channels.kept_count(4, 0.5, 1, 8) == 4  # never more than the layer has
    assert channels.kept_count(64, 0.9, 10, 1) == 10
    assert channels.kept_count(64, 0.0, 1, 8) == 64


def test_selection_keeps_the_most_important_and_never_brings_a_channel_back():
    scores = [torch.tensor([5.0, 1.0, 4.0, 3.0, 9.0])]
    assert channels.select_channels(scores, [3], [range(5)]) == [[0, 2, 4]]
    # channel 1 is important now, but was removed before: it stays out
    assert channels.select_channels([torch.tensor([5.0, 99.0, 4.0, 3.0, 9.0])], [2], [[0, 2, 4]]) == [[0, 4]]


def test_global_counts_rank_across_groups_with_floors_and_fixed_groups():
    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.1, 0.1, 10.0, 10.0]), torch.tensor([2.0, 2.0])]
    alive = [range(4), range(4), range(2)]
    counts = channels.global_counts(scores, alive, 0.5, fixed={2: 1}, floors=[1, 1, 1])
    assert counts[2] == 1 and sum(counts[:2]) == 4  # half of the 8 free channels
    assert counts[1] == 2  # its two weak channels (relative to its mean) go first
    assert channels.global_counts(scores, alive, 0.99, {}, floors=[2, 1, 1]) == [2, 1, 1]


def test_a_group_whose_removal_breaks_the_network_stays_whole_and_the_others_are_pruned():
    net = Heads()
    x = torch.randn(2, 4, 8)
    groups = channels.check_removable(net, channels.channel_groups(net, x), x)
    by_name = {g.name: g for g in groups}
    # qkv's outputs are reshaped into a head count written into the code (coupled with hidden's by the concat)
    assert by_name["qkv"].unsupported.startswith(
        "the network no longer runs once its channels are removed (RuntimeError: shape '[2, 4, 3, 2, 6]' is invalid")
    assert by_name["embed"].unsupported == ""  # the embedding width can go


class Flipped(nn.Module):
    """A channel reordering Torch-Pruning takes for an element-wise operation: ``flip`` of the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 6, 3)
        self.second = nn.Conv2d(6, 8, 3)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.second(torch.relu(self.first(x)).flip(1)))
        return self.head(x.mean([2, 3]))


def test_a_channel_reordering_the_graph_misses_leaves_its_group_whole():
    # Before, first's channels were removed by their index before the flip: the thinner network ran but computed
    # something else than the masked one. Now the group is left whole and says why; second's channels still go.
    torch.manual_seed(0)
    net = Flipped().eval()
    x = torch.randn(2, 1, 8, 8)
    by_name = {g.name: g for g in channels.check_removable(net, channels.channel_groups(net, x), x)}
    assert by_name["first"].unsupported.startswith(
        "once its channels are removed, the network computes differently from the masked one (largest difference")
    assert by_name["second"].unsupported == ""


def test_a_channel_shuffle_leaves_the_channels_through_it_whole_and_the_rest_prunable():
    # ShuffleNetV2's shuffle (view to 5-D, transpose, view back) made Torch-Pruning divide by zero: the whole network
    # was refused. Now the channels through the shuffle stay whole, and the stem, every unit's inner width and the
    # last 1x1 convolution are pruned; the thinner network computes what the masked one did.
    torch.manual_seed(0)
    net = _randomized(torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10))
    x = torch.randn(3, 3, 32, 32)
    groups = channels.check_removable(net, channels.channel_groups(net, x[:1]), x[:1])
    free = [g for g in groups if not g.unsupported]
    assert [g.name for g in free] == ["conv1.0", *(f"stage{s}.{u}.branch2.0" for s, units in ((2, 4), (3, 8), (4, 4))
                                                   for u in range(units)), "conv5.0"]
    whole = {g.name: g.unsupported for g in groups if g.unsupported}
    assert "stage2.0.branch2.5" in whole and "stage3.0.branch1.2" in whole
    assert all("channel shuffle" in reason for reason in whole.values()), whole
    kept = [list(range(0, g.size, 3)) for g in free]
    expected, thin = _masked_and_thin(net, free, kept, x)
    with torch.no_grad():
        assert not torch.allclose(net(x), expected, atol=1e-3)  # masking changed the output: not vacuous
        torch.testing.assert_close(thin(x), expected, rtol=1e-5, atol=1e-5)
    assert thin.stage2[1].branch2[0].out_channels == 8 and thin.conv5[0].out_channels == 342


def test_a_network_torch_pruning_cannot_trace_is_refused_in_one_line():
    class Score(nn.Module):  # Torch-Pruning walks the autograd graph back from the outputs: a Python number has none
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x).sum().item()

    with pytest.raises(ValueError, match=r"^Torch-Pruning cannot trace the channel dependencies of Score \(TypeError "
                                         r"in its .*\); channel pruning cannot run on it: use GMP") as err:
        channels.channel_groups(Score(), torch.zeros(1, 1, 8, 8))
    assert "\n" not in str(err.value)


def _vit_nets():
    import timm

    from lightning_micro.models import VisionTransformer

    zoo = VisionTransformer([1, 16, 16], 10, patch_size=4, dim=32, depth=2, num_heads=4, mlp_dim=48)
    timm_vit = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32,
                                                                depth=2, num_heads=4, num_classes=10)
    return {"zoo": zoo, "timm": timm_vit}


@pytest.mark.parametrize("which", ["zoo", "timm"])
def test_attention_heads_go_whole_with_their_qkv_rows_and_proj_columns(which):
    torch.manual_seed(0)
    net = _vit_nets()[which].eval()
    x = torch.randn(3, 1, 16, 16)
    groups = channels.check_removable(net, channels.channel_groups(net, x), x)
    heads = [g for g in groups if g.unit == "head"]
    # one group of 4 heads per block (timm's attention used to stay whole: its qkv reshape broke the removal)
    assert [(g.name, g.size, g.unsupported) for g in heads] == [("blocks.0.attn", 4, ""), ("blocks.1.attn", 4, "")]
    assert not any(g.producers == ["blocks.0.attn.qkv"] for g in groups if g.unit == "channel")
    mlp = [g for g in groups if g.unit == "channel" and not g.unsupported]
    assert len(mlp) == 2 and all(g.size == (48 if which == "zoo" else 128) for g in mlp)  # the MLPs' hidden neurons
    kept = [[1, 3], [0]] + [list(range(0, g.size, 2)) for g in mlp]
    chosen = heads + mlp
    masked = copy.deepcopy(net)
    with torch.no_grad():
        for name, mask in channels.channel_masks(masked, chosen, kept).items():
            masked.get_parameter(name).mul_(mask)
    thin = channels.remove_channels(copy.deepcopy(masked), channels.removal_plan(masked, chosen, kept))
    with torch.no_grad():
        torch.testing.assert_close(thin(x), masked(x), rtol=1e-5, atol=1e-5)
    attn = thin.blocks[0].attn
    assert attn.qkv.weight.shape == (3 * 2 * 8, 32) and attn.proj.weight.shape == (32, 2 * 8)
    # head h's query, key and value rows went together: the kept rows are heads 1 and 3 of each of q, k and v
    rows = net.blocks[0].attn.qkv.weight.detach()
    expected = torch.cat([rows[part * 32 + h * 8: part * 32 + (h + 1) * 8] for part in range(3) for h in (1, 3)])
    assert torch.equal(attn.qkv.weight.detach(), expected)
    if which == "timm":  # what timm's forward reads follows the projections
        assert (attn.num_heads, attn.attn_dim, thin.blocks[1].attn.num_heads) == (2, 16, 1)
