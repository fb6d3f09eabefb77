"""The int8 backend (torch.ao FX): the fake-quantized network and the integer network agree."""

from __future__ import annotations

import pytest
import torch
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
