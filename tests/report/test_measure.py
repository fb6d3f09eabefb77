"""The report's counts against independent counts: analytic MACs, known zero fractions, real file sizes."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_micro.artifact.format import save_compressed
from lightning_micro.models import LeNet5, LeNet300
from lightning_micro.report import measure as report

SPEC = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 28, 28], "num_classes": 10}


def test_known_zero_fraction_is_counted_exactly():
    net = LeNet300([1, 28, 28], 10)
    with torch.no_grad():
        net.fc2.weight.view(-1)[:12_000] = 0.0  # 40% of fc2's 300x100 weights
        net.fc3.bias.zero_()  # 10 more zeros, outside any weight matrix
    counts = report.parameter_counts(net)
    assert counts["params/total"] == 266_610
    assert counts["params/nonzero"] == 266_610 - 12_000 - 10
    fields = report.sparsity(net)
    assert fields["sparsity/fc2.weight"] == pytest.approx(0.4)
    assert fields["sparsity/fc1.weight"] == 0.0
    assert fields["sparsity/global"] == pytest.approx(12_010 / 266_610)
    assert "sparsity/fc3.bias" not in fields


def test_macs_match_the_layer_arithmetic():
    assert report.count_macs(LeNet300([1, 28, 28], 10), [1, 28, 28]) == 784 * 300 + 300 * 100 + 100 * 10
    conv1 = 20 * 24 * 24 * (1 * 5 * 5)
    conv2 = 50 * 8 * 8 * (20 * 5 * 5)
    assert report.count_macs(LeNet5([1, 28, 28], 10), [1, 28, 28]) == conv1 + conv2 + 800 * 500 + 500 * 10
    assert report.count_macs(LeNet5([1, 28, 28], 10), [1, 28, 28], convolutions_only=True) == conv1 + conv2
    assert report.count_macs(LeNet300([1, 28, 28], 10), [1, 28, 28], convolutions_only=True) == 0


def test_latency_measures_every_network():
    nets = {"a": LeNet300([1, 8, 8]), "b": LeNet300([1, 8, 8])}
    times = report.measure_latency_ms(nets, [1, 8, 8], batch_size=4, min_run_time=0.01, rounds=2)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())


def test_build_report_sizes_are_file_sizes(tmp_path):
    net = LeNet300([1, 28, 28], 10)
    with torch.no_grad():
        net.fc1.weight.view(-1)[::2] = 0.0
    artifact_bytes = save_compressed(net, SPEC, tmp_path / "a.safetensors")
    save_compressed(LeNet300([1, 28, 28], 10), SPEC, tmp_path / "d.safetensors")
    fields = report.build_report(net, LeNet300([1, 28, 28], 10), [1, 28, 28], tmp_path / "a.safetensors",
                                 tmp_path / "d.safetensors", metrics={"test/acc": 0.5},
                                 latency_batch_sizes=[2], latency_min_run_time=0.01)
    assert fields["size/artifact_bytes"] == artifact_bytes == (tmp_path / "a.safetensors").stat().st_size
    assert fields["size/dense_bytes"] == (tmp_path / "d.safetensors").stat().st_size
    assert fields["size/ratio"] == pytest.approx(fields["size/dense_bytes"] / artifact_bytes)
    assert fields["test/acc"] == 0.5
    assert fields["sparsity/fc1.weight"] == pytest.approx(0.5)
    assert {"latency/ms_b2", "latency/dense_ms_b2", "latency/speedup_b2"} <= set(fields)


def test_write_report_never_overwrites(tmp_path):
    path = tmp_path / "r.json"
    report.write_report({"a": 1}, path)
    with pytest.raises(FileExistsError):
        report.write_report({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 1}


def test_the_latency_note_explains_a_slow_batch_1_only_when_there_is_one():
    from lightning_micro.report.measure import latency_note

    int8 = {"latency/speedup_b1": 0.5, "latency/speedup_b64": 3.9, "quant/activation_bits": 8}
    assert latency_note(int8).startswith("Batch 1 is 0.50x the dense speed, batch 64 3.90x: the int8 kernels")
    small = {"latency/speedup_b1": 0.8, "latency/speedup_b64": 1.2}
    assert "per-call overhead" in latency_note(small)
    assert latency_note({"latency/speedup_b1": 1.3, "latency/speedup_b64": 2.0}) is None  # faster at both
    assert latency_note({"latency/speedup_b1": 0.8, "latency/speedup_b64": 0.7}) is None  # no batch effect
    assert latency_note({"latency/speedup_b1": 0.8}) is None  # one batch size measured


def test_the_runtime_table_names_the_fastest_form_against_dense_in_its_own_runtime(tmp_path):
    from lightning_micro.artifact.onnx import OnnxRuntimeNet, write_onnx

    torch.manual_seed(0)
    net, dense = LeNet300([1, 8, 8]), LeNet300([1, 8, 8])
    spec = {**SPEC, "input_shape": [1, 8, 8]}
    save_compressed(net, spec, tmp_path / "a.safetensors")
    save_compressed(dense, spec, tmp_path / "d.safetensors")
    write_onnx(net, [1, 8, 8], tmp_path / "a.onnx")
    write_onnx(dense, [1, 8, 8], tmp_path / "d.onnx")
    fields = report.build_report(net, dense, [1, 8, 8], tmp_path / "a.safetensors", tmp_path / "d.safetensors",
                                 latency_batch_sizes=[1, 16], latency_min_run_time=0.01,
                                 onnx_net=OnnxRuntimeNet(tmp_path / "a.onnx"),
                                 onnx_dense_net=OnnxRuntimeNet(tmp_path / "d.onnx"))
    for b in (1, 16):
        assert {f"latency/onnx_ms_b{b}", f"latency/onnx_dense_ms_b{b}", f"latency/onnx_speedup_b{b}",
                f"latency/onnx_vs_eager_dense_b{b}", f"runtime/fastest_b{b}"} <= set(fields)
        fastest = fields[f"runtime/fastest_b{b}"]
        prefix = {"PyTorch eager": "", "ONNX Runtime": "onnx_"}[fastest]
        assert fields[f"latency/{prefix}ms_b{b}"] == min(fields[f"latency/ms_b{b}"], fields[f"latency/onnx_ms_b{b}"])
        assert fields[f"latency/fastest_speedup_b{b}"] == pytest.approx(
            fields[f"latency/{prefix}dense_ms_b{b}"] / fields[f"latency/{prefix}ms_b{b}"])
    line = report.headline(fields)
    speedup = fields["latency/fastest_speedup_b16"]
    assert line.startswith(f"{fields['size/ratio']:.1f}x smaller, ")
    assert f"batch 16, {fields['runtime/fastest_b16']}" in line
    assert ("x faster" in line) == (speedup > 1.0) and ("not faster" in line) == (speedup <= 1.0)


def test_the_headline_says_so_when_no_form_is_faster():
    fields = {"size/ratio": 4.0, "runtime/fastest_b64": "ONNX Runtime", "latency/fastest_speedup_b64": 0.9,
              "macs/dense": 100, "macs/effective": 100}
    assert report.headline(fields) == ("4.0x smaller, not faster: 0.90x the dense speed at best (batch 64, ONNX "
                                       "Runtime); it runs 1.00x the dense network's multiply-accumulates per image")
    assert report.headline({**fields, "latency/fastest_speedup_b64": 1.5}) == (
        "4.0x smaller, 1.50x faster (batch 64, ONNX Runtime)")
