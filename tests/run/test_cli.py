"""The real command line: `python train.py ...` in a subprocess, as a user or a sweep runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.helpers.cli import run_cli
from tests.helpers.config import ROOT, mnist_dir

QUICK = ["debug=fdr", "~callbacks.rich_progress_bar", "report.latency_min_run_time=0.01",
         "report.latency_batch_sizes=[1]", "report.onnx=false",
         "report.sparse_kernels=never", "report.memory_layout=contiguous"]


def test_unknown_group_option_lists_the_allowed_ones(tmp_path):
    out = run_cli(["model=lenet999", f"hydra.run.dir={tmp_path / 'run'}"])
    assert out.returncode == 2
    assert out.stderr == ("Error: model: 'lenet999' is not an option of the model group; choose one of "
                          "['lenet300', 'lenet5', 'mobilenet', 'mobilenetv2', 'resnet20', 'shufflenet', "
                          "'tv_mobilenet_v3_small', 'vit_tiny']\n")
    assert not (tmp_path / "run").exists()  # checked before Hydra creates the run directory


def test_existing_run_dir_is_refused_and_kept(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("earlier: run\n")
    out = run_cli([*QUICK, f"hydra.run.dir={run_dir}"])
    assert out.returncode != 0
    assert f"hydra.run.dir: {run_dir} already exists and is not empty" in out.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "earlier: run\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra"]


def test_two_value_sweep_then_rerun_a_saved_config_dense(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(["-m", "model.optimizer.lr=0.01,0.05", *QUICK, f"hydra.sweep.dir={sweep}"])
    assert out.returncode == 0, out.stderr[-3000:]
    learning_rates = []
    for job in ("0", "1"):
        assert (sweep / job / "compression_report.json").is_file()
        assert (sweep / job / "model.safetensors").is_file()
        learning_rates.append(yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())
                              ["model"]["optimizer"]["lr"])
    assert learning_rates == [0.01, 0.05]

    # The composed config a run saved is itself a primary config; '~compression' retrains it dense.
    rerun = tmp_path / "rerun"
    out = run_cli(["--config-path", str(sweep / "1" / ".hydra"), "--config-name", "config", "~compression",
                   f"hydra.run.dir={rerun}"])
    assert out.returncode == 0, out.stderr[-3000:]
    saved = yaml.safe_load((rerun / ".hydra" / "config.yaml").read_text())
    assert "compression" not in saved and saved["model"]["optimizer"]["lr"] == 0.05
    assert json.loads((rerun / "compression_report.json").read_text())["size/ratio"] == 1.0


def test_optuna_study_runs_trials_and_reports_the_best(tmp_path):
    sweep = tmp_path / "optuna"
    out = run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *QUICK, f"hydra.sweep.dir={sweep}"])
    assert out.returncode == 0, out.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"model.optimizer.lr", "model.optimizer.weight_decay"}
    trial_values = [json.loads((sweep / job / "compression_report.json").read_text())["val/acc"]
                    for job in ("0", "1")]
    assert results["best_value"] == max(trial_values)


def test_ddp_fit_on_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    out = run_cli(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
                   "compression=[]",
                   "logger=csv", "~callbacks.rich_progress_bar", "report.latency_min_run_time=0.01",
                   "report.latency_batch_sizes=[1]", "report.onnx=false", "report.sparse_kernels=never",
                   "report.memory_layout=contiguous", f"hydra.run.dir={run_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "distributed_backend=gloo" in log
    assert "Starting with 2 processes" in log
    report = json.loads((run_dir / "compression_report.json").read_text())  # written once, by rank 0
    assert report["test/acc"] > 0.2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_six_runs_started_together_on_one_fresh_data_folder_all_succeed(tmp_path):
    # A parallel sweep's first minute: every run finds MNIST packed (.gz only) and unpacks it at once.
    import os
    import shutil
    import subprocess
    import sys

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (mnist_dir() / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    runs = [subprocess.Popen(
        [sys.executable, "train.py", *QUICK, "logger=none", "data=mnist", f"data.data_dir={tmp_path / 'data'}",
         "compression=[]", f"hydra.run.dir={tmp_path / f'run{i}'}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        for i in range(6)]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * 6, [e[-500:] for e in errors]
    assert all((tmp_path / f"run{i}" / "model.safetensors").is_file() for i in range(6))
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


def test_a_study_under_a_byte_budget_maximizes_accuracy_within_it(tmp_path):
    sweep = tmp_path / "budget"
    out = run_cli(["hparams_search=optuna_budget", "hydra.sweeper.n_trials=2", "report.byte_budget=12000", *QUICK,
                   f"hydra.sweep.dir={sweep}"])
    assert out.returncode == 0, out.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"compression.gmp.final_sparsity", "compression.qat.weight_bits"}
    values = []
    for job in ("0", "1"):
        report = json.loads((sweep / job / "compression_report.json").read_text())
        within = report["size/artifact_bytes"] <= 12000
        assert report["budget/within"] == within and report["quant/weight_bits"] in (2, 4, 8)
        assert report["budget/val_acc"] == pytest.approx(report["val/acc"] - (0.0 if within else 1.0))
        values.append(report["budget/val_acc"])
    assert results["best_value"] == pytest.approx(max(values))


def test_readme_rerun_command_starts_a_new_run_under_logs_runs(tmp_path):
    """README's re-run line, as written, from a directory where `python train.py` runs: the re-run lands in
    logs/runs/<time> like any run (not Hydra's own outputs/), and the first run's files are untouched."""
    readme = (ROOT / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("python train.py --config-path")]
    command = line.split("#")[0].strip()
    (tmp_path / "train.py").symlink_to(ROOT / "train.py")  # train.py finds conf/ beside its real path
    first = subprocess.run([sys.executable, "train.py", *QUICK, "logger=csv"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = list((tmp_path / "logs" / "runs").iterdir())
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    command = command.replace("<run>", run.name).replace("python", sys.executable, 1)
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "runs").iterdir())
    assert len(runs) == 2 and not (tmp_path / "outputs").exists()
    (rerun,) = [r for r in runs if r != run]
    assert json.loads((rerun / "compression_report.json").read_text())["size/ratio"] == 1.0  # '~compression'
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_prints_no_python_warning_one_wandb_line_and_keeps_its_log(tmp_path):
    """The default logger (W&B offline) and the default recipe, shortened: nothing third-party to read past."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "PYTHONWARNINGS")}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "train.py", "trainer.max_epochs=1", "report.latency_min_run_time=0.01",
                           "report.latency_batch_sizes=[1,8]", f"hydra.run.dir={run}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    screen = done.stdout + done.stderr
    assert not re.search(r"Warning\b|warnings\.warn|is deprecated", screen), screen[-3000:]
    wandb_lines = [line for line in screen.splitlines() if "wandb" in line.lower() or "W&B" in line]
    assert len(wandb_lines) == 1 and wandb_lines[0].startswith("W&B offline run in "), wandb_lines
    assert "litlogger" not in screen
    log = (run / "train.log").read_text()  # the run's log, not an empty file
    assert "GradualMagnitudePruning: 3 tensors" in log and "Wrote report compression_report.json" in log


def test_the_last_line_names_only_what_the_run_wrote(tmp_path):
    run = tmp_path / "run"
    done = run_cli([*QUICK, f"hydra.run.dir={run}"])
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("Wrote ")]
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ("checkpoints/" in line) == bool(checkpoints)
    assert all(name in line for name in checkpoints) and "epoch_" not in line  # fast_dev_run keeps no epoch file
    assert line.endswith(f" in {run}")
