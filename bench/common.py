"""What every bench script shares: the JSON writer (results carry the commit and date) and one recipe run
through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "bench" / "runs"


def write(path: Path, payload: dict) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    payload = {**payload, "commit": commit.stdout.strip() or None, "date": time.strftime("%Y-%m-%d")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def run_recipe(tag: str, overrides: list[str], seed: int, report_keys: tuple[str, ...] | None = None) -> dict:
    """``python train.py <overrides> seed=<seed>`` with one thread into bench/runs/<tag>_seed<seed>_<time>; the
    command, run directory, wall time and the report's fields (all, or ``report_keys``)."""
    run_dir = RUNS / f"{tag}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    args = [*overrides, f"seed={seed}", "logger=csv", "~callbacks.rich_progress_bar", f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{tag} seed {seed} failed:\n{out.stderr[-3000:]}")
    report = json.loads((run_dir / "compression_report.json").read_text())
    print(f"{tag} seed {seed}: test/acc {report['test/acc']:.4f}", flush=True)
    fields = report if report_keys is None else {k: report.get(k) for k in report_keys}
    return {"seed": seed, "command": "python train.py " + " ".join(args[:-1]),
            "run_dir": str(run_dir.relative_to(ROOT)), "wall_s": round(time.perf_counter() - started, 1), **fields}
