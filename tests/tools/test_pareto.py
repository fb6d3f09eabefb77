"""Pareto pictures of a real sweep: the table against the runs' reports, the front, the CSV and the PNG."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_micro.tools.pareto import gather, main, pareto_front, plot
from tests.helpers.config import FAST, ROOT
from tests.helpers.wandb_files import wandb_run_records

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_front_keeps_the_points_no_other_beats():
    points = [(100, 0.90), (50, 0.80), (50, 0.85), (200, 0.95), (150, 0.94), (300, 0.95), (120, 0.80)]
    # (50, .85) beats (50, .80); (120, .80) is beaten by (100, .90); (300, .95) by (200, .95)
    assert pareto_front(points) == [0, 2, 3, 4]
    assert pareto_front([(10, 0.5), (10, 0.5)]) == [0]
    assert pareto_front([]) == []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """``python train.py -m`` over two GMP sparsities, as README shows (one batch each)."""
    root = tmp_path_factory.mktemp("sweep")
    done = subprocess.run([sys.executable, "train.py", "-m", "compression=gmp",
                           "compression.gmp.final_sparsity=0.5,0.9", "debug=fdr", *FAST, f"hydra.sweep.dir={root}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_a_sweep_gives_the_csv_the_png_and_a_table_matching_the_runs_reports(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path)]) == 0
    with (tmp_path / "pareto.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    reports = {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("compression_report.json")}
    assert len(rows) == len(reports) == 2
    for row in rows:
        report = reports[row["run"]]
        assert float(row["test/acc"]) == report["test/acc"]
        assert int(row["size/artifact_bytes"]) == report["size/artifact_bytes"]
        assert row["techniques"] == "gmp" and "compression.gmp.final_sparsity=" in row["overrides"]
    assert [int(r["size/artifact_bytes"]) for r in rows] == sorted(int(r["size/artifact_bytes"]) for r in rows)
    assert rows[0]["pareto"] == "True"  # the smallest run is always on the front
    assert (tmp_path / "pareto.png").read_bytes()[:8] == PNG
    assert "Pareto front" in capsys.readouterr().out


def test_with_wandb_on_the_table_and_the_plot_go_to_an_offline_run(sweep, tmp_path):
    assert main([str(sweep), "--out", str(tmp_path), "--wandb", "offline"]) == 0
    run, records = wandb_run_records(tmp_path / "wandb", (b"pareto/table", b"pareto/plot"))
    assert b"pareto/table" in records and b"pareto/plot" in records
    (table,) = run.glob("files/media/table/pareto/table_*.table.json")
    logged = json.loads(table.read_text())
    with (tmp_path / "pareto.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert logged["columns"] == list(written[0])
    assert [str(row[0]) for row in logged["data"]] == [row["run"] for row in written]
    assert list(run.glob("files/media/images/pareto/plot_*.png"))


def test_the_plot_marks_dense_and_every_technique(tmp_path):
    rows = [{"run": "a", "techniques": "dense", "test/acc": 0.98, "size/artifact_bytes": 1_000_000,
             "size/dense_bytes": 1_000_000, "pareto": True},
            {"run": "b", "techniques": "gmp+qat", "test/acc": 0.97, "size/artifact_bytes": 30_000,
             "size/dense_bytes": 1_000_000, "pareto": True}]
    plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG


def test_a_directory_without_runs_is_one_message(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (f"Error: {tmp_path / 'missing'} is not a directory: give a sweep "
                                               "directory (logs/multiruns/<time>)")
    with pytest.raises(ValueError, match="holds no run report"):
        gather(tmp_path)
