"""Malformed configs and files, across every config group and technique: each gives one message on stderr and a
non-zero exit, before any training step, and leaves nothing of a run behind.

Each case runs the real command line (``train.py``'s ``cli()``: Hydra parses the overrides, composes, runs) in this
process, which costs a fraction of a second instead of a new interpreter per case; a few cases also run in a
subprocess to check what a shell sees. The whole stderr is compared, not only its last line.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from tests.helpers.config import FAST, ROOT, compose_cfg, mnist_dir

SPEC = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
train_script = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(train_script)

QUICK = ["debug=limit", "~callbacks.rich_progress_bar"]

# (id, overrides, the message's start: "Error: <key>: ...", a fragment that says what is allowed or wrong)
CONFIGS = [
    ("seed_text", ["seed=abc"], "seed", "must be an integer"),
    ("seed_negative", ["seed=-1"], "seed", "must be an integer in [0, 2**32)"),
    ("lr_text", ["model.optimizer.lr=fast"], "model.optimizer", "torch.optim.SGD(lr='fast'"),
    ("lr_nan", ["model.optimizer.lr=nan"], "model.optimizer", "learning rate nan; it must be a finite number"),
    ("lr_negative", ["model.optimizer.lr=-1"], "model.optimizer", "Invalid learning rate: -1"),
    ("momentum_negative", ["model.optimizer.momentum=-0.5"], "model.optimizer", "Invalid momentum value"),
    ("optimizer_unknown", ["model.optimizer._target_=torch.optim.NoSuch"], "model.optimizer", "torch.optim.NoSuch"),
    ("scheduler_t_max_0", ["model.scheduler.T_max=0"], "model.scheduler", "ZeroDivisionError"),
    ("scheduler_t_max_text", ["model.scheduler.T_max=abc"], "model.scheduler", "T_max='abc'"),
    ("net_unknown", ["model.net._target_=no_such_module.Net"], "model.net", "no_such_module"),
    ("net_classes", ["model.net.num_classes=7"], "model.net", "expected (2, 10)"),
    ("net_hidden", ["model.net.hidden=[0]"], "model", "hidden"),
    ("lenet300_on_cifar", ["model=lenet300", "data=cifar10", "data.data_dir=."], "model.net", "3 channels"),
    ("compression_null", ["compression=null"], "compression", "compression=[] trains without compression"),
    ("logger_null", ["logger=null"], "logger", "choose one of ['csv', 'default', 'none', 'wandb']"),
    ("gmp_sparsity_high", ["compression.gmp.final_sparsity=1.5"], "compression.gmp",
     "final_sparsity must be a number in [0, 1), got 1.5"),
    ("gmp_sparsity_negative", ["compression.gmp.final_sparsity=-0.1"], "compression.gmp", "final_sparsity"),
    ("gmp_schedule", ["compression.gmp.schedule=exponential"], "compression.gmp", "schedule must be one of"),
    ("gmp_scope", ["compression.gmp.scope=local"], "compression.gmp", "scope must be 'global' or 'layerwise'"),
    ("gmp_update_every", ["compression.gmp.update_every=0"], "compression.gmp", "update_every must be an integer"),
    ("gmp_pattern_matches_nothing", ["compression.gmp.include=[nope*]"], "compression.gmp", "nope*"),
    ("gmp_end_after_run", ["compression.gmp.end=50"], "compression.gmp", "end=50 epochs is after the end"),
    ("gmp_floor", ["compression.gmp.min_layer_density=2"], "compression.gmp", "min_layer_density"),
    ("qat_bits", ["compression.qat.weight_bits=3"], "compression.qat", "weight_bits"),
    ("qat_start_text", ["compression.qat.start=soon"], "compression.qat", "start"),
    ("qat_backend", ["compression.qat.backend=arm"], "compression.qat", "backend"),
    ("tt_ranks", ["compression=[tt]", "compression.tt.ranks=0"], "compression.tt", "ranks"),
    ("tt_pattern", ["compression=[tt]", "compression.tt.include=[conv*]"], "compression.tt", "conv*"),
    ("tt_two_sizes", ["compression=[tt]", "compression.tt.compression_ratio=4"], "compression.tt", "one of"),
    ("lowrank_ratio", ["compression=[lowrank]", "compression.lowrank.compression_ratio=0.5"], "compression.lowrank",
     "compression_ratio"),
    ("lowrank_method", ["compression=[lowrank]", "data=mnist", "model=lenet5", "compression.lowrank.conv_method=svd"],
     "compression.lowrank", "conv_method"),
    ("tt_and_lowrank_one_layer", ["compression=[tt,lowrank]", "compression.tt.include=[fc1]",
                                  "compression.lowrank.include=[fc1]"], "compression.", "both select ['fc1']"),
    ("data_batch_size", ["data.batch_size=0"], "data", "batch_size must be a positive integer"),
    ("data_val_size", ["data.val_size=-5"], "data", "val_size"),
    ("data_dir_missing", ["data=mnist", "model=lenet5", "data.data_dir=/no/such/dir"], "data",
     "'/no/such/dir' is not an existing directory"),
    ("trainer_0_epochs", ["trainer.max_epochs=0"], "trainer.max_epochs", "report.allow_untrained=true"),
    ("trainer_0_batches", ["trainer.limit_train_batches=0"], "trainer.limit_train_batches", "train nothing"),
    ("trainer_accelerator", ["trainer.accelerator=quantum"], "trainer", "quantum"),
    ("trainer_epochs_text", ["trainer.max_epochs=many"], "trainer.max_epochs", "must be a number, got 'many'"),
    ("trainer_devices_0", ["trainer.devices=0"], "trainer", "devices"),
    ("latency_batch_0", ["report.latency_batch_sizes=[0]"], "report.latency_batch_sizes", "got [0]"),
    ("latency_threads_0", ["report.latency_threads=0"], "report.latency_threads", "integer >= 1"),
    ("latency_time_negative", ["report.latency_min_run_time=-1"], "report.latency_min_run_time", "> 0"),
    ("allow_untrained_text", ["report.allow_untrained=maybe"], "report.allow_untrained", "true or false"),
    ("byte_budget_zero", ["report.byte_budget=0"], "report.byte_budget", "number of bytes >= 1 or null, got 0"),
    ("sparse_kernels_odd", ["report.sparse_kernels=sometimes"], "report.sparse_kernels",
     "must be one of ['auto', 'always', 'never'], got 'sometimes'"),
    ("memory_layout_odd", ["report.memory_layout=nhwc"], "report.memory_layout",
     "must be one of ['auto', 'contiguous', 'channels_last'], got 'nhwc'"),
    ("report_unknown_key", ["+report.colour=red"], "report.colour", "is not a report setting"),
    ("callback_without_target", ["+callbacks.early_stop.monitor=val/acc"], "callbacks.early_stop",
     "needs a _target_"),
    ("callback_bad_argument", ["callbacks.model_checkpoint.save_top_k=abc"], "callbacks.model_checkpoint",
     "save_top_k"),
    ("logger_unknown", ["+logger.other._target_=no_such.Logger"], "logger.other", "no_such"),
    ("ckpt_missing", ["ckpt_path=/no/such.ckpt"], "ckpt_path", "is not a file"),
]

CONFIGS += [
    ("model_unknown", ["model=lenet9000"], "model",
     "'lenet9000' is not an option of the model group; choose one of ['lenet300', 'lenet5', 'mobilenet', "
     "'mobilenetv2', 'resnet20', 'shufflenet', 'tv_mobilenet_v3_small', 'vit_tiny']"),
    ("experiment_unknown", ["experiment=nope"], "experiment", "'nope' is not an option of the experiment group"),
    ("compression_unknown", ["compression=[gmp,nope]"], "compression", "'nope' is not an option"),
    ("data_unknown", ["data=imagenet"], "data", "choose one of ['cifar10', 'digits', 'fashion_mnist', 'mnist']"),
]

# Mistakes Hydra itself answers while composing (a key that does not exist): its own short message, which names
# the key and says how to add one, no traceback.
HYDRA_COMPOSITION = [
    ("trainer_key_unknown", ["trainer.bogus=1"], "trainer.bogus", "Could not override"),
    ("model_key_unknown", ["model.net.widht=3"], "model.net.widht", "Could not override"),
]


def run_cli(args: list[str], tmp_path: Path, capfd) -> tuple[int, str, Path]:
    """``python train.py <args>`` in this process: its exit status, its whole stderr and its run directory."""
    run_dir = tmp_path / "run"
    GlobalHydra.instance().clear()
    argv = ["train.py", f"hydra.run.dir={run_dir}", "hydra.job.name=train", *QUICK, *args]
    old_argv = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as stop:
            train_script.cli()
    finally:
        sys.argv = old_argv
        GlobalHydra.instance().clear()
    _, err = capfd.readouterr()
    return stop.value.code, err, run_dir


def assert_nothing_ran(run_dir: Path) -> None:
    """No training step: no checkpoint, no artifact, no report, no logger output (Hydra's saved config and its
    job log, which every start writes, are all there is)."""
    left = {p.name for p in run_dir.iterdir()} if run_dir.exists() else set()
    assert left <= {".hydra", "train.log"}, f"a run started: {sorted(left)}"


@pytest.mark.parametrize(("overrides", "key", "fragment"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_a_malformed_config_gives_one_line_naming_its_key_and_exit_2(overrides, key, fragment, tmp_path, capfd):
    code, err, run_dir = run_cli(overrides, tmp_path, capfd)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # the whole stderr: one line, no traceback, no Lightning banner before it
    assert lines[0].startswith(f"Error: {key}"), lines[0]
    assert fragment in lines[0], lines[0]
    assert_nothing_ran(run_dir)


@pytest.mark.parametrize(("overrides", "key", "fragment"), [c[1:] for c in HYDRA_COMPOSITION],
                         ids=[c[0] for c in HYDRA_COMPOSITION])
def test_a_config_hydra_cannot_compose_gets_hydras_short_message(overrides, key, fragment, tmp_path, capfd):
    code, err, run_dir = run_cli(overrides, tmp_path, capfd)
    assert code == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 16, err
    assert key in err and fragment in err, err
    assert err.strip().endswith("Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.")
    assert_nothing_ran(run_dir)


@pytest.fixture(scope="module")
def gmp_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of a short GMP run (compression=[gmp])."""
    from lightning_micro.run.training import train

    out = tmp_path_factory.mktemp("gmp_run")
    train(compose_cfg([*FAST, "compression=[gmp]", "debug=limit", "trainer.max_epochs=1"], out))
    return out / "checkpoints" / "last.ckpt"


def damaged_files(directory: Path, checkpoint: Path) -> dict[str, tuple[Path, str]]:
    """Files a user may pass as ckpt_path, each with what the message must say."""
    directory.mkdir(exist_ok=True)
    empty = directory / "empty.ckpt"
    empty.write_bytes(b"")
    truncated = directory / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    text = directory / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    weights = directory / "weights.pt"
    torch.save({"fc1.weight": torch.zeros(2)}, weights)
    return {
        "empty": (empty, "is empty (0 bytes)"),
        "truncated": (truncated, "is not a readable checkpoint"),
        "text": (text, "is not a readable checkpoint"),
        "state_dict_only": (weights, "holds no Lightning training state"),
        "directory": (directory, "is not a file"),
    }


@pytest.mark.parametrize("damage", ["empty", "truncated", "text", "state_dict_only", "directory"])
def test_a_bad_ckpt_path_file_is_named_before_training(damage, gmp_checkpoint, tmp_path, capfd):
    path, fragment = damaged_files(tmp_path / "files", gmp_checkpoint)[damage]
    code, err, run_dir = run_cli([f"ckpt_path={path}"], tmp_path, capfd)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"Error: ckpt_path: {path}"), err
    assert fragment in err
    assert_nothing_ran(run_dir)


def test_resuming_with_another_compression_list_is_refused_naming_both(gmp_checkpoint, tmp_path, capfd):
    code, err, run_dir = run_cli([f"ckpt_path={gmp_checkpoint}", "compression=[qat]"], tmp_path, capfd)
    assert code == 2
    assert err.strip() == (
        "Error: ckpt_path: the checkpoint was written by a run compressing with ['GradualMagnitudePruning'], but "
        "this run has ['QuantizationAwareTraining']; resuming would lose or invent compression state (masks, "
        "observer ranges, swapped layers). Resume with the same compression list, or start a new run (this run: "
        "compression=[qat])")
    assert_nothing_ran(run_dir)


def test_a_truncated_dataset_file_is_named(tmp_path, capfd):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (mnist_dir() / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    damaged = raw / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    code, err, run_dir = run_cli(["data=mnist", "model=lenet5", f"data.data_dir={tmp_path / 'data'}"], tmp_path,
                                 capfd)
    assert code == 2
    assert err.strip().splitlines() == [f"Error: data.data_dir: {damaged} is truncated/corrupt: EOFError: "
                                        "Compressed file ended before the end-of-stream marker was reached; "
                                        "replace it"], err
    assert_nothing_ran(run_dir)


def test_an_existing_run_dir_is_one_line_too(tmp_path, capfd):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    code, err, _ = run_cli([], tmp_path, capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("Error: hydra.run.dir: "), err
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_a_shell_sees_one_line_and_status_2_and_the_traceback_only_when_asked(tmp_path):
    import os

    def run(extra_env: dict[str, str], run_dir: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "train.py", f"hydra.run.dir={run_dir}", *QUICK,
                               "compression.gmp.final_sparsity=1.5"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, **extra_env})

    plain = run({}, tmp_path / "a")
    assert plain.returncode == 2
    assert plain.stderr == ("Error: compression.gmp: lightning_micro.callbacks.GradualMagnitudePruning rejected its "
                            "arguments: final_sparsity must be a number in [0, 1), got 1.5\n")
    full = run({"HYDRA_FULL_ERROR": "1"}, tmp_path / "b")
    assert full.returncode != 0 and "Traceback (most recent call last)" in full.stderr
