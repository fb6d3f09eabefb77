"""The int8 backend (torch.ao FX): the fake-quantized network and the integer network agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_micro.core import int8_backend
from lightning_micro.models import LeNet5, MobileNet


def _trained_prepared(net: nn.Module, shape, per_channel=True, symmetric=True, steps=30):
    torch.manual_seed(0)
    prepared = int8_backend.prepare_qat(net, shape, per_channel, symmetric)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(16, *shape)
        loss = nn.functional.cross_entropy(prepared(x), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return prepared


@pytest.mark.parametrize(("make", "shape"), [(lambda: LeNet5([1, 28, 28]), [1, 28, 28]),
                                             (lambda: MobileNet([1, 16, 16], width_multiplier=0.25), [1, 16, 16])],
                         ids=["lenet5", "mobilenet-convbn"])
@pytest.mark.parametrize(("per_channel", "symmetric"), [(True, True), (False, False)])
def test_fake_quantized_and_converted_networks_agree(make, shape, per_channel, symmetric):
    prepared = _trained_prepared(make(), shape, per_channel, symmetric)
    prepared.eval()
    x = torch.randn(64, *shape)
    with torch.no_grad():
        # Ranges from this very batch, so neither network clips it: torch.ao's fake quantization clips at the
        # reduced (7-bit) range while the x86 integer kernels' outputs use all 8 bits, which differ only there.
        for module in prepared.modules():
            if hasattr(module, "activation_post_process") and hasattr(module, "enable_observer"):
                module.activation_post_process.reset_min_max_vals()
        int8_backend.set_observers(prepared, True)
        prepared(x)
        int8_backend.set_observers(prepared, False)
        fake = prepared(x)
        converted = int8_backend.convert(prepared)
        real = converted(x)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in converted.modules())
    difference = (fake - real).abs().max()
    assert difference <= 0.1 * fake.abs().max()  # a few quantization steps of the output at most
    # Same prediction wherever the fake-quantized network's margin is larger than that difference (an untrained
    # network has near-ties that any rounding flips).
    top2 = fake.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * difference
    assert decided.sum() >= 16
    assert torch.equal(fake.argmax(1)[decided], real.argmax(1)[decided])


def test_quantized_tensor_parts_round_trip():
    w = torch.randn(6, 4)
    for tensor in (torch.quantize_per_channel(w, torch.rand(6) + 0.01, torch.zeros(6, dtype=torch.long), 0,
                                              torch.qint8),
                   torch.quantize_per_channel(w, torch.rand(6).double() + 0.01, torch.arange(6), 0, torch.qint8),
                   torch.quantize_per_tensor(w, 0.05, 3, torch.quint8)):
        back = int8_backend.quantized_tensor_from_parts(int8_backend.quantized_tensor_parts(tensor))
        assert back.dtype == tensor.dtype and back.qscheme() == tensor.qscheme()
        assert torch.equal(back.int_repr(), tensor.int_repr())
        assert torch.equal(back.dequantize(), tensor.dequantize())


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not symbolically traceable
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_network_and_unknown_backend_are_refused():
    with pytest.raises(ValueError, match="symbolically traceable"):
        int8_backend.prepare_qat(Branchy(), [4])
    with pytest.raises(ValueError, match="backend must be one of"):
        int8_backend.prepare_qat(LeNet5(), [1, 28, 28], backend="arm")


@pytest.mark.parametrize("backend", ["x86", "pt2e"])
@pytest.mark.parametrize("stop", [TimeoutError("the time limit"), MemoryError()], ids=["time limit", "memory"])
def test_a_stop_during_preparation_passes_through_as_itself(monkeypatch, backend, stop):
    """An interrupt, a time limit or a full memory is not the network's fault: it is not turned into "cannot be
    prepared" (the FX tracer and torch.export each raise it mid-trace here)."""
    import torch.ao.quantization.quantize_fx as quantize_fx

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(torch.export, "export", stopped)
    monkeypatch.setattr(quantize_fx, "prepare_qat_fx", stopped)
    with pytest.raises(type(stop)) as raised:
        int8_backend.prepare_qat(LeNet5(), [1, 28, 28], backend=backend)
    assert raised.value is stop


class _WideGlobalMean(nn.Module):  # MnasNet's and ShuffleNetV2's head: 1,280 channels averaged by x.mean([2, 3])
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1280, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(1280, 10)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean([2, 3]))


class _FunctionalTraining(nn.Module):  # a forward that reads self.training itself, as timm's layers do
    def __init__(self, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.batch_norm = batch_norm
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        if self.batch_norm:
            n = self.norm
            x = F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, self.training, 0.1, n.eps)
        x = F.dropout(x, 0.5, training=self.training)
        return self.fc(x.mean([2, 3]))


def _converted(net: nn.Module, shape) -> nn.Module:
    prepared = int8_backend.prepare_qat(net, shape)
    for _ in range(3):
        prepared(torch.randn(8, *shape))
    return int8_backend.convert(prepared)


def test_a_wide_global_mean_runs_in_the_integer_network():
    # torch's quantized mean of a channels-last [N, 1280, 1, 1] tensor failed when it dropped the dimensions
    # ("required rank 4 tensor to use channels_last format")
    converted = _converted(_WideGlobalMean(), [3, 1, 1])  # a 32x32 image after a 32x downsampling
    x = torch.randn(2, 3, 1, 1)
    assert converted(x).shape == (2, 10)


def test_dropout_written_down_by_tracing_follows_eval_again():
    prepared = int8_backend.prepare_qat(_FunctionalTraining(batch_norm=False), [3, 8, 8])
    x = torch.randn(4, 3, 8, 8)
    prepared(x)  # observed once, then the ranges stay put between the two calls below
    prepared.eval()
    int8_backend.set_observers(prepared, False)
    with torch.no_grad():
        assert torch.equal(prepared(x), prepared(x))  # traced in training mode, it dropped at random in eval
    converted = _converted(_FunctionalTraining(batch_norm=False), [3, 8, 8])
    assert torch.equal(converted(x), converted(x))


def test_a_functional_batch_norm_with_its_flag_written_down_is_refused():
    with pytest.raises(ValueError, match=r"calls F.batch_norm in its forward .* normalize by each batch"):
        int8_backend.prepare_qat(_FunctionalTraining(batch_norm=True), [3, 8, 8])


def test_timms_batch_norm_act_is_unfolded_and_the_integer_network_does_not_normalize_by_the_batch():
    timm = pytest.importorskip("timm")
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    converted = _converted(net, [3, 8, 8])
    x = torch.randn(6, 3, 8, 8)
    assert torch.equal(converted(x)[:2], converted(x[:2]))  # each image's logits, whatever the batch
