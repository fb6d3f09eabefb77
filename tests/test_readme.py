"""README.md against what it describes: its Python snippet runs as written, its configuration reference names every
group option and technique key of conf/, its links to its own sections resolve, and its table against the papers
is what bench/table.py renders from bench/results/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONF = ROOT / "conf"


def snippet(name: str) -> str:
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)```", README, re.S)
    assert match, f"README has no snippet {name}"
    return match.group(1)


def test_the_python_snippet_runs_as_written(tmp_path):
    for name in ("my_module.py", "compress.py"):
        (tmp_path / name).write_text(snippet(name))
    done = subprocess.run([sys.executable, "compress.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(re.search(r"held-out accuracy ([\d.]+)%", done.stdout).group(1))
    assert accuracy > 80  # 8 epochs on digits, 80% pruned, int8
    size = int(re.search(r"artifact ([\d,]+) bytes", done.stdout).group(1).replace(",", ""))
    assert size == (tmp_path / "model.safetensors").stat().st_size


def group_row(group: str) -> str:
    (row,) = [line for line in README.splitlines() if line.startswith(f"| `{group}` |")]
    return row


def test_the_configuration_table_names_every_option_of_every_group():
    groups = [p.name for p in CONF.iterdir() if p.is_dir()]
    for group in groups:
        row = group_row(group)
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            assert f"`{option}`" in row, f"README's configuration table lacks {group}={option}"


def test_every_technique_key_is_in_its_section_table():
    for path in sorted((CONF / "compression").glob("*.yaml")):
        (name, node), = yaml.safe_load(path.read_text()).items()
        header = next((i for i, line in enumerate(README.splitlines())
                       if line.startswith("| `compression.") and f"compression.{name}.*" in line), None)
        assert header is not None, f"README has no table of compression.{name}.*"
        table = []
        for line in README.splitlines()[header + 2:]:
            if not line.startswith("|"):
                break
            table.append(line.split("|")[1])
        named = set(re.findall(r"`([a-z_0-9]+)`", " ".join(table)))
        missing = [key for key in node if key != "_target_" and key not in named]
        assert not missing, f"README's compression.{name}.* table lacks {missing}"


def test_links_to_sections_resolve():
    def anchor(title: str) -> str:
        return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")

    anchors = {anchor(line.lstrip("#").strip()) for line in README.splitlines() if line.startswith("#")}
    for target in re.findall(r"\]\(#([^)]+)\)", README):
        assert target in anchors, f"README links to #{target}, which no heading makes"


def test_the_results_tables_are_what_bench_renders():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import table
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert table.readme_with_tables(README) == README, "run python bench/table.py --readme"
    assert table.ONNX_MARKERS[0] in README and table.README_MARKERS[0] in README
