"""The per-layer picture: one panel per kind of per-layer field a report holds, none without them."""

from __future__ import annotations

from lightning_micro.report.pictures import _panels, layer_picture

REPORT = {
    "sparsity/global": 0.5, "sparsity/fc1.weight": 0.9, "sparsity/fc2.weight": 0.5, "quant/weight_bits": 4,
    "structured/kept/conv1": "6/20", "tt/fc1/ratio": 12.5, "tt/fc1/ranks": "1-4-4-1",
    "lowrank/conv2/ratio": 2.0, "lowrank/conv2/rank": "8-4", "layerdrop/droppable": 7,
    "layerdrop/removed_blocks": "layer1.0,layer2.2",
}


def test_each_kind_of_per_layer_field_gets_its_panel(tmp_path):
    panels = {title: (labels, values, notes) for title, labels, values, notes in _panels(REPORT)}
    weights = panels["weights kept (non-zero fraction), 4-bit weights"]
    assert weights[0] == ["fc1.weight", "fc2.weight"] and weights[1] == [0.09999999999999998, 0.5]
    assert panels["channels kept per group"] == (["conv1"], [0.3], ["6/20"])
    assert panels["parameters: dense / factorized (ranks)"] == (
        ["fc1 (tt)", "conv2 (lowrank)"], [12.5, 2.0], ["12.5x  r=1-4-4-1", "2.0x  r=8-4"])
    assert panels["droppable blocks removed: 2 of 7"][0] == ["layer1.0", "layer2.2"]
    assert layer_picture(REPORT, tmp_path / "layers.png")
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_per_layer_field_no_picture(tmp_path):
    assert not layer_picture({"test/acc": 0.9, "sparsity/global": 0.0}, tmp_path / "layers.png")
    assert not (tmp_path / "layers.png").exists()
