"""Every fenced code block of README.md and docs/ runs here, or says on the line before it why it cannot.

- ```python: executed as a script in a fresh process, in a directory of its own that holds README's
  ``my_module.py`` (the docs' examples import it), with the repository on ``PYTHONPATH``. README's two
  ``<!-- snippet: ... -->`` blocks are run together by tests/test_readme.py.
- ```bash, ```shell, ```console whose every command is ``python train.py ...`` (after optional ``VAR=value``):
  each command is composed with Hydra's compose API (a ``-m`` sweep: each combination of the swept values, at
  most 8) and checked as train.py checks a run before it trains: its group choices and plain values, then,
  unless a value holds a ``<placeholder>`` (a run directory only a real run has) or the trainer needs a GPU or
  several processes, its network built and its techniques built against it and against the run.
  ``<!-- fails: <key> -->`` before such a block says the checks must stop it with a config error naming that key.
- any other block: ``<!-- not-run: <reason> -->`` on the line before it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from lightning_micro.run.instantiate import ConfigError, instantiate
from lightning_micro.run.preflight import check_group_overrides, check_run_config
from lightning_micro.run.training import build_techniques, check_composition
from tests.helpers.config import CONF, ROOT, compose_cfg

SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELLS = ("bash", "shell", "console", "sh")
# trainers that need hardware or processes this check cannot have: composed and checked, not built
NOT_BUILT_TRAINERS = ("gpu", "ddp")
# what a <placeholder> (a run directory only a real run has) becomes: it composes, nothing is built from it
PLACEHOLDER = "PLACEHOLDER"


@dataclass
class Block:
    source: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str  # the line before the fence

    @property
    def name(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        marker = lines[i - 1].strip() if i else ""
        found.append(Block(path, i + 1, opening.group(2), "\n".join(lines[i + 1:end]) + "\n", marker))
        i = end + 1
    return found


BLOCKS = [block for source in SOURCES for block in blocks(source)]


def kind(block: Block) -> str:
    if re.fullmatch(r"<!-- not-run: \S.* -->", block.marker):
        return "not-run"
    if block.marker.startswith("<!-- snippet: ") and block.source.name == "README.md":
        return "snippet"
    if block.lang == "python":
        return "python"
    if block.lang in SHELLS and commands(block) is not None:
        return "train"
    return "unrunnable"


def commands(block: Block) -> list[list[str]] | None:
    """The block's commands as ``train.py``'s arguments, or None when one is not ``python train.py ...``."""
    text = re.sub(r"\\\n", " ", block.code)
    found = []
    for line in text.splitlines():
        words = shlex.split(re.sub(r"<[^<>]+>", PLACEHOLDER, line.removeprefix("$ ")), comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words = words[1:]
        if not words:
            continue
        if words[:2] != ["python", "train.py"] or any(w.startswith("--") for w in words[2:]):
            return None
        found.append(words[2:])
    return found or None


def expanded(args: list[str]) -> list[list[str]]:
    """One list of overrides per job of a ``-m`` sweep (the first 8 combinations of the swept values), or the
    arguments themselves."""
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if len(overrides) == len(args):
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(job) for job in product(*choices)][:8]


def check_like_train(overrides: list[str], output_dir: Path) -> None:
    """What ``python train.py <overrides>`` checks before it builds a DataModule or starts a logger."""
    check_group_overrides(overrides, CONF)
    cfg = compose_cfg(overrides, output_dir)
    check_run_config(cfg)
    if any(PLACEHOLDER in o for o in overrides):
        return
    module = instantiate(cfg.model, "model")
    techniques = build_techniques(cfg.get("compression"), module)
    if any(o.startswith("trainer=") and o.split("=", 1)[1] in NOT_BUILT_TRAINERS for o in overrides):
        return
    trainer = instantiate(cfg.trainer, "trainer", callbacks=techniques, logger=False)
    check_composition(cfg.get("compression"), techniques, trainer, module)


def test_every_block_runs_or_says_why_not():
    unmarked = [f"{b.name} ({b.lang or 'no language'})" for b in BLOCKS if kind(b) == "unrunnable"]
    assert not unmarked, ("blocks that are neither Python nor python train.py lines; mark each with "
                          f"<!-- not-run: <reason> --> on the line before it: {unmarked}")
    snippets = {b.marker for b in BLOCKS if kind(b) == "snippet"}
    assert snippets == {"<!-- snippet: my_module.py -->", "<!-- snippet: compress.py -->"}, snippets


@pytest.mark.parametrize("block", [b for b in BLOCKS if kind(b) == "train"], ids=lambda b: b.name)
def test_train_lines_compose_and_pass_the_checks_before_training(block, tmp_path):
    expected = re.fullmatch(r"<!-- fails: (\S+) -->", block.marker)
    for args in commands(block):
        for job in expanded(args):
            if expected:
                with pytest.raises(ConfigError) as refused:
                    check_like_train(job, tmp_path)
                assert refused.value.key == expected.group(1), str(refused.value)
            else:
                check_like_train(job, tmp_path)


@pytest.mark.parametrize("block", [b for b in BLOCKS if kind(b) == "python"], ids=lambda b: b.name)
def test_python_blocks_run(block, tmp_path):
    readme = (ROOT / "README.md").read_text()
    module = re.search(r"<!-- snippet: my_module.py -->\n```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "my_module.py").write_text(module)
    (tmp_path / "block.py").write_text(block.code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{block.name}:\n{done.stderr[-3000:]}"
