"""Memory layout: a CNN in channels_last computes what it computes in NCHW; the choice is timed, recorded in the
artifact and replayed on load; its ONNX export equals the NCHW outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_micro.artifact.format import load_compressed, read_metadata, save_compressed
from lightning_micro.artifact.onnx import OnnxRuntimeNet, write_onnx
from lightning_micro.core.memory_layout import apply_layout, choose_layout, has_4d_weights, layout_of
from lightning_micro.models import LeNet5, LeNet300

SPEC = {"_target_": "lightning_micro.models.LeNet5", "input_shape": [1, 28, 28]}


def lenet5() -> nn.Module:
    torch.manual_seed(0)
    return LeNet5([1, 28, 28]).eval()


def test_channels_last_computes_what_nchw_computes():
    net, x = lenet5(), torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        expected = net(x)
        apply_layout(net, "channels_last")
        assert layout_of(net) == "channels_last"
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    assert layout_of(apply_layout(net, "contiguous")) == "contiguous"
    with pytest.raises(ValueError, match="layout must be one of"):
        apply_layout(net, "nhwc")


def test_the_choice_is_timed_and_leaves_the_network_as_it_was():
    net = lenet5()
    chosen, times = choose_layout(net, [1, 28, 28], [1, 16], min_run_time=0.01, rounds=1)
    assert chosen in ("contiguous", "channels_last")
    assert set(times) == {f"{layout}_ms_b{b}" for layout in ("contiguous", "channels_last") for b in (1, 16)}
    faster = min(("contiguous", "channels_last"), key=lambda layout: times[f"{layout}_ms_b16"])
    assert chosen == faster
    assert layout_of(net) == "contiguous"
    assert not has_4d_weights(LeNet300([1, 8, 8]))
    assert choose_layout(LeNet300([1, 8, 8]), [1, 8, 8]) == ("contiguous", {})


def test_the_artifact_records_the_layout_and_load_replays_it(tmp_path):
    net, x = lenet5(), torch.randn(4, 1, 28, 28)
    path = tmp_path / "model.safetensors"
    save_compressed(net, SPEC, path, layout="channels_last")
    assert read_metadata(path)["layout"] == "channels_last"
    loaded = load_compressed(path)
    assert layout_of(loaded) == "channels_last"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-5)
    onnx_path = tmp_path / "model.onnx"
    write_onnx(loaded, [1, 28, 28], onnx_path)  # the ONNX graph of a channels_last network: NCHW in and out
    with torch.no_grad():
        torch.testing.assert_close(OnnxRuntimeNet(onnx_path)(x), net(x), rtol=1e-4, atol=1e-4)
