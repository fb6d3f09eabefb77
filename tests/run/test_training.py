"""train(cfg) end to end on the composed config: what a run leaves on disk, and bad input refused early."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from lightning_micro.artifact.format import load_compressed
from lightning_micro.data import DatasetNotFoundError
from lightning_micro.run.classifier import ClassifierModule
from lightning_micro.run.instantiate import ConfigError
from lightning_micro.run.training import train
from tests.helpers.config import FAST, compose_cfg
from tests.helpers.wandb_files import wandb_run_records


def test_default_run_leaves_report_artifact_wandb_files_and_checkpoint(tmp_path):
    cfg = compose_cfg([*FAST, "trainer.max_epochs=2", "logger=default"], tmp_path)
    metrics = train(cfg)

    report = json.loads((tmp_path / "compression_report.json").read_text())
    for field in ("test/acc", "params/total", "params/nonzero", "sparsity/global", "sparsity/fc1.weight",
                  "size/dense_bytes", "size/artifact_bytes", "size/ratio", "macs/dense", "macs/effective",
                  "latency/ms_b1", "latency/ms_b8"):
        assert field in report, field
    assert report["test/acc"] == pytest.approx(metrics["test/acc"])
    assert report["test/acc"] > 0.5  # two epochs on digits learn something
    assert report["size/artifact_bytes"] == (tmp_path / "model.safetensors").stat().st_size
    # The default, compression=[gmp,qat]: pruned to 90%, then int8 (torch.ao), stored sparse and quantized.
    assert report["gmp/pruned_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert report["quant/weight_bits"] == 8 and report["quant/activation_bits"] == 8
    assert report["params/nonzero"] <= 0.1 * 50_200 + 410  # zeros survive conversion: <= 10% of weights + biases
    assert report["size/ratio"] > 8
    assert report["macs/effective"] == report["macs/dense"]  # dense kernels run every MAC of a sparse matrix

    # W&B offline run files, inside the run directory, with the report in the summary.
    keys = (b"size/artifact_bytes", b"macs/effective", b"val/acc", b"train/loss_step", b"compression/layers")
    run, records = wandb_run_records(tmp_path / "wandb", keys)
    for key in keys:
        assert key in records, key
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert any(row.get("report/params/total") for row in rows)
    # The per-layer picture, in the run directory and logged to W&B as an image
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(run.glob("files/media/images/compression/layers_*.png"))

    # Checkpoint and artifact both rebuild the trained network: the checkpoint holds it fake-quantized, as it
    # trained; converted, it is exactly the artifact.
    module = ClassifierModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert [e["transform"] for e in module.transforms] == ["int8_qat_prepare"]
    module.apply_transform("int8_convert")
    net = load_compressed(tmp_path / "model.safetensors")
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(module(x), net(x))


def test_dense_run_exports_the_plain_fp32_network(tmp_path):
    train(compose_cfg([*FAST, "compression=[]"], tmp_path))
    report = json.loads((tmp_path / "compression_report.json").read_text())
    assert report["size/ratio"] == 1.0  # no technique ran: the artifact is the plain fp32 export
    assert report["sparsity/global"] == 0.0
    assert not any(key.startswith("gmp/") for key in report)
    assert not (tmp_path / "layers.png").exists()  # nothing compressed, no per-layer picture


def test_existing_run_outputs_are_never_overwritten(tmp_path):
    (tmp_path / "compression_report.json").write_text("{}")
    cfg = compose_cfg(FAST, tmp_path)
    with pytest.raises(ConfigError, match=r"^paths\.output_dir: .*already holds a run's outputs"):
        train(cfg)
    assert (tmp_path / "compression_report.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model.optimizer.lr=-0.1"], ConfigError,
         r"^model\.optimizer: torch\.optim\.SGD\(lr=-0\.1, .*\) rejected its arguments: Invalid learning rate: -0\.1"),
        (["data=cifar10", "model=lenet300", "paths.data_dir=."], ConfigError,
         r"^model\.net: .*single-channel.*3 channels"),
        (["data=mnist", "paths.data_dir=/no/such/dir"], ConfigError, r"^data: .*data_dir '/no/such/dir' is not an"),
        (["+callbacks.early_stop.monitor=val/acc"], ConfigError, r"^callbacks\.early_stop: this node needs a _target_"),
        (["data=mnist", "model=lenet5", "model.net.num_classes=7"], ConfigError, r"^model\.net: .*expected \(2, 10\)"),
        (["ckpt_path=/no/such.ckpt"], ConfigError, r"^ckpt_path: /no/such.ckpt is not a file"),
    ],
)
def test_bad_input_fails_before_training(overrides, error, message, tmp_path):
    cfg = compose_cfg([*FAST, *overrides], tmp_path)
    with pytest.raises(error, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_dataset_fails_before_training(tmp_path):
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    cfg = compose_cfg([*FAST, "data=mnist", "model=lenet5", f"paths.data_dir={data_dir}"], tmp_path / "run")
    with pytest.raises(DatasetNotFoundError, match=r"^data\.data_dir: MNIST is not under"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ckpt_path_resumes_into_a_new_run_dir(tmp_path):
    train(compose_cfg([*FAST, "trainer.max_epochs=2"], tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    train(compose_cfg([*FAST, "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path / "second"))
    resumed = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2  # one more epoch, not three
    assert any(key.startswith("GradualMagnitudePruning") for key in resumed["callbacks"])
