"""The artifact: weights only, never overwritten, and it reloads in a fresh process with equal outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from lightning_micro.artifact.format import CODECS, load_compressed, read_metadata, save_compressed
from lightning_micro.models import MobileNet

SPEC = {"_target_": "lightning_micro.models.MobileNet", "input_shape": [3, 16, 16], "num_classes": 5,
        "width_multiplier": 0.25}


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = MobileNet([3, 16, 16], 5, width_multiplier=0.25)
    model.train()
    model(torch.randn(8, 3, 16, 16))  # move the BatchNorm running statistics away from their defaults
    return model.eval()


def test_reload_in_a_fresh_process_gives_equal_outputs(net, tmp_path):
    path = tmp_path / "model.safetensors"
    save_compressed(net, SPEC, path)
    x = torch.randn(4, 3, 16, 16)
    torch.save({"x": x, "y": net(x).detach()}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        "from lightning_micro.artifact.format import load_compressed\n"
        f"net = load_compressed({str(path)!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "print(type(net).__name__, torch.equal(net(io['x']), io['y']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["MobileNet", "True"]


def test_artifact_holds_tensors_and_json_only(net, tmp_path):
    path = tmp_path / "model.safetensors"
    save_compressed(net, SPEC, path)
    meta = read_metadata(path)
    assert meta["net"] == SPEC
    assert set(meta["codecs"].values()) == {"dense"}
    with safe_open(str(path), framework="pt") as handle:
        assert {k.rsplit("::", 1)[0] for k in handle.keys()} == set(net.state_dict())


def test_existing_file_is_never_overwritten(net, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        save_compressed(net, SPEC, path)
    assert path.read_bytes() == b"keep me"


def test_unknown_codec_and_key_are_refused(net, tmp_path):
    with pytest.raises(ValueError, match="unknown codec 'zip'"):
        save_compressed(net, SPEC, tmp_path / "a.safetensors", codecs={"classifier.weight": "zip"})
    with pytest.raises(ValueError, match="codecs name keys the network does not have"):
        save_compressed(net, SPEC, tmp_path / "b.safetensors", codecs={"nope": "dense"})
    assert "dense" in CODECS


def test_foreign_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a lightning_micro artifact"):
        load_compressed(tmp_path / "other.safetensors")
