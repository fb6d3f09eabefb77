"""Print the README results rows from bench/results/*.json: python bench/table.py"""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def baseline_rows(payload: dict) -> list[str]:
    rows = []
    for recipe, result in payload["results"].items():
        run = result["runs"][0]
        acc = ", ".join(f"{r['test/acc']:.2%}" for r in result["runs"])
        rows.append(
            f"| `{recipe}` | {acc} | {run['params/total']:,} | {run['macs/dense']:,} | "
            f"{run['size/artifact_bytes']:,} | {run['latency/ms_b1']:.3f} / {run['latency/ms_b64']:.3f} |"
        )
    return rows


if __name__ == "__main__":
    print("\n".join(baseline_rows(json.loads((RESULTS / "baselines.json").read_text()))))
