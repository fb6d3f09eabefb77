"""Loading an artifact or a checkpoint never runs code from it, and a damaged artifact is reported, not loaded.

The payloads are the ones an attacker would try: a nested ``_target_`` inside a normal LeNet spec, a string handed
to a function that evaluates strings (sympy's ``sympify``), targets that write files (``builtins.open``,
``pathlib.Path.write_text``) and a module planted in the working directory. Every loader runs in a fresh process
whose working directory holds the planted module, and each test asserts that no file was created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_micro.artifact.format import (
    FORMAT,
    METADATA_KEY,
    ArtifactError,
    _checksum,
    load_compressed,
    save_compressed,
)
from lightning_micro.artifact.trust import UntrustedSpecError
from lightning_micro.models import LeNet300
from lightning_micro.run.classifier import ClassifierModule
from tests.helpers.config import ROOT
from tests.helpers.user_nets import ResidualDepthwiseNet

SPEC = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]}


def payloads(marker: Path) -> dict[str, dict]:
    """Network specs that would create ``marker`` if anything in them were imported, called or evaluated."""
    python = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "nested_target": {**SPEC, "hidden": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}},
        "nested_in_list": {**SPEC, "hidden": [300, {"_target_": "pathlib.Path.write_text", "data": "x"}]},
        "sympy_string": {"_target_": "sympy.sympify", "a": python},
        "builtins_open": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "path_write_text": {"_target_": "pathlib.Path.write_text", "self": str(marker), "data": "pwned"},
        "planted_module": {"_target_": "planted.Net"},
        "hydra_partial": {"_target_": "builtins.exec", "_partial_": True, "source": python},
        "hydra_args": {"_target_": "lightning_micro.models.LeNet300", "_args_": [[1, 8, 8]]},
        "interpolation": {**SPEC, "num_classes": "${oc.env:HOME}"},  # a string, never resolved
    }


def write_artifact(path: Path, spec: dict) -> None:
    """An artifact with ``spec`` as its network and a valid checksum: what an attacker can write."""
    save_compressed(LeNet300([1, 8, 8]), SPEC, path)
    with safe_open(str(path), framework="pt") as handle:
        fields = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    fields["net"] = spec
    fields["checksum"] = _checksum(tensors, fields)
    path.unlink()
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(fields, sort_keys=True)})


def run_in(directory: Path, code: str) -> subprocess.CompletedProcess:
    """``python -c code`` with ``directory`` as the working directory (first on sys.path, as for any script)."""
    return subprocess.run([sys.executable, "-c", code], cwd=directory, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def load_each_in_a_fresh_process(directory: Path, loader: str, paths: list[str], names: list[str]
                                  ) -> dict[str, str]:
    """Load every file with ``loader`` (code that binds ``load``) in one fresh process working in ``directory``:
    ``{name: "LOADED"}`` or ``{name: "<error type> <first line of its message>"}``."""
    code = (
        f"{loader}\n"
        "from lightning_micro.artifact.trust import UntrustedSpecError\n"
        f"for name, path in zip({names!r}, {paths!r}):\n"
        "    try:\n"
        "        load(path)\n"
        "        print(name, 'LOADED')\n"
        "    except (UntrustedSpecError, TypeError) as err:\n"
        "        print(name, type(err).__name__, str(err).splitlines()[0][:300])\n"
    )
    out = run_in(directory, code)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert set(lines) == set(names)
    return lines


@pytest.fixture
def attack_dir(tmp_path):
    """A working directory with a planted module that creates ``pwned_on_import`` when imported."""
    directory = tmp_path / "cwd"
    directory.mkdir()
    (directory / "planted.py").write_text(
        "open('pwned_on_import', 'w').write('pwned')\nclass Net:\n    pass\n")
    return directory


def created_files(directory: Path, before: set[str]) -> set[str]:
    return {p.name for p in directory.rglob("*")} - before


def test_no_payload_in_an_artifact_runs_code(attack_dir, tmp_path):
    marker = attack_dir / "pwned"
    names = []
    for name, spec in payloads(marker).items():
        write_artifact(tmp_path / f"{name}.safetensors", spec)
        names.append(name)
    before = {p.name for p in attack_dir.rglob("*")}
    lines = load_each_in_a_fresh_process(
        attack_dir, "from lightning_micro.artifact.format import load_compressed as load",
        [str(tmp_path / f"{name}.safetensors") for name in names], names)
    refused = {k: v for k, v in lines.items() if k != "interpolation"}
    assert all(v.startswith("UntrustedSpecError") for v in refused.values()), lines
    assert lines["interpolation"].startswith("TypeError")  # LeNet300 got the literal string; nothing resolved it
    assert "'sympy.sympify' is not trusted" in lines["sympy_string"]
    assert "'planted.Net' is not trusted" in lines["planted_module"]
    assert "nested _target_ is refused" in lines["nested_target"]
    assert created_files(attack_dir, before) == set()  # no marker, no import of the planted module


def test_interpolation_strings_stay_strings_and_are_passed_to_the_trusted_class(tmp_path):
    # The zoo class gets the literal string and rejects it; nothing resolves ${...}.
    write_artifact(tmp_path / "a.safetensors", {**SPEC, "num_classes": "${oc.env:HOME}"})
    with pytest.raises(TypeError):
        load_compressed(tmp_path / "a.safetensors")


def test_a_user_class_loads_only_when_the_caller_trusts_it(tmp_path):
    spec = {"_target_": "tests.helpers.user_nets.ResidualDepthwiseNet", "width": 8}
    path = tmp_path / "user.safetensors"
    save_compressed(ResidualDepthwiseNet(width=8), spec, path)
    with pytest.raises(UntrustedSpecError, match=r"'tests.helpers.user_nets.ResidualDepthwiseNet' is not trusted.*"
                                                 r"trusted=\[ResidualDepthwiseNet\]"):
        load_compressed(path)
    for trusted in ([ResidualDepthwiseNet], ["tests.helpers.user_nets.ResidualDepthwiseNet"],
                    ["tests.helpers.user_nets"]):
        assert isinstance(load_compressed(path, trusted=trusted), ResidualDepthwiseNet)
    with pytest.raises(ValueError, match="names neither an importable module"):
        load_compressed(path, trusted=["tests.helpers.user_nets.NoSuchThing"])


def test_trust_registers_a_class_for_the_process(tmp_path):
    code = (
        "import lightning_micro\n"
        "from lightning_micro.artifact.format import load_compressed, save_compressed\n"
        "from tests.helpers.user_nets import ResidualDepthwiseNet\n"
        f"path = {str(tmp_path / 'u.safetensors')!r}\n"
        "save_compressed(ResidualDepthwiseNet(width=8), {'_target_': 'tests.helpers.user_nets.ResidualDepthwiseNet', "
        "'width': 8}, path)\n"
        "lightning_micro.trust(ResidualDepthwiseNet)\n"
        "print(type(load_compressed(path)).__name__)\n"
    )
    out = run_in(ROOT, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ResidualDepthwiseNet"


def flip_data_byte(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_data_byte_is_reported_by_the_checksum(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compressed(LeNet300([1, 8, 8]), SPEC, path)
    flip_data_byte(path)
    with pytest.raises(ArtifactError, match=r"m.safetensors was changed or damaged after export: its checksum "):
        load_compressed(path)


def test_changed_metadata_is_reported_by_the_checksum(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compressed(LeNet300([1, 8, 8]), SPEC, path)
    raw = path.read_bytes()
    assert raw.count(b'"num_classes"') == 0 and raw.count(b"[1, 8, 8]") == 1
    path.write_bytes(raw.replace(b"[1, 8, 8]", b"[1, 8, 9]"))  # same length, header still valid JSON
    with pytest.raises(ArtifactError, match="checksum does not match"):
        load_compressed(path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_safetensors", "other_format"])
def test_a_file_that_is_not_an_artifact_gets_one_message_naming_it(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    save_compressed(LeNet300([1, 8, 8]), SPEC, path)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_safetensors":
        path.write_text("hello")
    else:
        path.unlink()
        save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match=r"m.safetensors (is not a readable artifact|is not a lightning_micro)"):
        load_compressed(path)


def test_the_same_network_exported_twice_gives_the_same_bytes_in_two_processes(tmp_path):
    torch.manual_seed(0)
    net = LeNet300([1, 8, 8])
    torch.save(net.state_dict(), tmp_path / "w.pt")
    code = (
        "import sys, torch\n"
        "from lightning_micro.artifact.format import save_compressed\n"
        "from lightning_micro.models import LeNet300\n"
        "net = LeNet300([1, 8, 8]); net.load_state_dict(torch.load(sys.argv[1]))\n"
        "save_compressed(net, {'_target_': 'lightning_micro.models.LeNet300', 'input_shape': [1, 8, 8]}, "
        "sys.argv[2], codecs={'fc1.weight': 'bitmask'}, record=[])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.pt"), str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    save_compressed(net, SPEC, tmp_path / "b", codecs={"fc1.weight": "bitmask"}, record=[])  # this process
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert json.loads(safe_open(str(tmp_path / "a"), "pt").metadata()[METADATA_KEY])["format"] == FORMAT


def classifier_checkpoint(path: Path, net_spec: dict, optimizer: dict | None = None) -> None:
    """A real ClassifierModule checkpoint whose saved hyper-parameters are then replaced: it still passes
    torch's weights-only check, as the tampered checkpoints of the issue did."""
    module = ClassifierModule(net=SPEC, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                              input_shape=[1, 8, 8])
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["net"] = net_spec
    if optimizer is not None:
        checkpoint["hyper_parameters"]["optimizer"] = optimizer
    torch.save(checkpoint, path)


def test_load_from_checkpoint_never_runs_the_payloads(attack_dir, tmp_path):
    marker = attack_dir / "pwned"
    cases = dict(payloads(marker))
    cases["optimizer_payload"] = None
    for name, spec in cases.items():
        if spec is None:
            classifier_checkpoint(tmp_path / f"{name}.ckpt", SPEC,
                                  optimizer={"_target_": "builtins.open", "_partial_": True, "file": str(marker)})
        else:
            classifier_checkpoint(tmp_path / f"{name}.ckpt", spec)
    before = {p.name for p in attack_dir.rglob("*")}
    lines = load_each_in_a_fresh_process(
        attack_dir,
        "from lightning_micro.run.classifier import ClassifierModule\nload = ClassifierModule.load_from_checkpoint",
        [str(tmp_path / f"{name}.ckpt") for name in sorted(cases)], sorted(cases))
    assert all(v.startswith("UntrustedSpecError") or (k == "interpolation" and v.startswith("TypeError"))
               for k, v in lines.items()), lines
    assert created_files(attack_dir, before) == set()


def test_a_clean_checkpoint_still_loads_and_a_user_network_needs_trust(tmp_path):
    classifier_checkpoint(tmp_path / "ok.ckpt", SPEC)
    assert isinstance(ClassifierModule.load_from_checkpoint(tmp_path / "ok.ckpt").net, LeNet300)
    user = {"_target_": "tests.helpers.user_nets.ResidualDepthwiseNet", "width": 8}
    module = ClassifierModule(net=user, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                              input_shape=[1, 8, 8])  # from the user's own code or config: trusted
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "user.ckpt")
    with pytest.raises(UntrustedSpecError, match="'tests.helpers.user_nets.ResidualDepthwiseNet' is not trusted"):
        ClassifierModule.load_from_checkpoint(tmp_path / "user.ckpt")
    loaded = ClassifierModule.load_from_checkpoint(tmp_path / "user.ckpt", trusted=["tests.helpers.user_nets"])
    assert type(loaded.net).__name__ == "ResidualDepthwiseNet"
