"""README.md and the docs site (docs/) against what they describe: README's Python snippet runs as written; the
configuration page names every option of every group of conf/; each technique's page renders the class that its
conf/compression YAML names, and that class's docstring has an argument for every key of the YAML node; the report
page names every report setting; links between README and the pages, and to their sections, resolve; and the
results tables are what bench/table.py renders from bench/results/."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
CONF = ROOT / "conf"
PAGES = sorted(DOCS.rglob("*.md"))


def page(name: str) -> str:
    return (DOCS / name).read_text()


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
    (row,) = [line for line in page("configuration.md").splitlines() if line.startswith(f"| `{group}` |")]
    return row


def test_the_configuration_table_names_every_option_of_every_group():
    groups = [p.name for p in CONF.iterdir() if p.is_dir()]
    for group in groups:
        row = group_row(group)
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            assert f"`{option}`" in row, f"docs/configuration.md's table lacks {group}={option}"


def docstring_arguments(target: str) -> set[str]:
    """The names under ``Args:`` in the docstring of the class ``target`` (a dotted path), as the docs render it."""
    module, _, name = target.rpartition(".")
    doc = inspect.getdoc(getattr(importlib.import_module(module), name)) or ""
    match = re.search(r"^Args:\n(.*?)(?=^\S|\Z)", doc, re.S | re.M)
    assert match, f"{target}'s docstring has no Args: section"
    return set(re.findall(r"^    \**(\w+)\s*(?:\([^)]*\))?:", match.group(1), re.M))


def test_every_technique_key_is_an_argument_on_its_page():
    for path in sorted((CONF / "compression").glob("*.yaml")):
        (name, node), = yaml.safe_load(path.read_text()).items()
        target = node["_target_"]
        pages = [p for p in (DOCS / "techniques").glob("*.md") if re.search(rf"^::: {re.escape(target)}$",
                                                                            p.read_text(), re.M)]
        assert len(pages) == 1, f"no page of docs/techniques/ (or more than one) renders {target} ({name})"
        text = pages[0].read_text()
        assert f'--8<-- "conf/compression/{path.name}"' in text, f"{pages[0].name} does not show {path.name}"
        named = docstring_arguments(target)
        missing = [key for key in node if key != "_target_" and key not in named]
        assert not missing, f"{target}'s docstring (rendered on {pages[0].name}) has no argument {missing}"


def test_the_report_page_names_every_report_setting():
    settings = yaml.safe_load((CONF / "train.yaml").read_text())["report"]
    missing = [key for key in settings if f"`report.{key}`" not in page("report.md")]
    assert not missing, f"docs/report.md does not name report.{missing}"


def github_anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def mkdocs_anchor(title: str) -> str:
    """Python-Markdown's toc slug, which the site uses."""
    text = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))


def anchors(path: Path) -> set[str]:
    """The sections a link may name: headings whose slug is the same on GitHub and on the site."""
    titles = [re.sub(r"`", "", line.lstrip("#").strip()) for line in without_code_blocks(path).splitlines()
              if re.match(r"#{1,6} ", line)]
    return {github_anchor(t) for t in titles} & {mkdocs_anchor(t) for t in titles}


def without_code_blocks(path: Path) -> str:
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def test_links_resolve():
    """Every relative link of README and of each docs page names a file that exists and, after a #, one of its
    headings; a page links only inside docs/ (the site holds nothing else)."""
    bad = []
    for source in [ROOT / "README.md", *PAGES]:
        for target in re.findall(r"\]\(([^)\s]+)\)", without_code(source.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (source.parent / file).resolve() if file else source
            if not path.exists() or (source != ROOT / "README.md" and DOCS not in path.parents):
                bad.append(f"{source.relative_to(ROOT)} -> {target}: no such file in reach")
            elif anchor and anchor not in anchors(path):
                bad.append(f"{source.relative_to(ROOT)} -> {target}: no such heading")
    assert not bad, "\n".join(bad)


def test_the_results_tables_are_what_bench_renders():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import table
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results = page("results.md")
    assert table.with_tables(README) == README, "run python bench/table.py --readme"
    assert table.with_tables(results) == results, "run python bench/table.py --readme"
    assert table.README_MARKERS[0] in README and table.ONNX_MARKERS[0] in results
    missing = [name for name in table.DOCS_TABLES if table.table_markers(name)[0] not in results]
    assert not missing, f"docs/results.md lacks the tables {missing}"
