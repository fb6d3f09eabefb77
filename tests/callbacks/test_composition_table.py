"""The composition table is the one home of the pairing rules: every technique of the package declares a family
the table knows, every rule names known families, and the docs' matrix is the table rendered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lightning_micro.callbacks as callbacks
from lightning_micro.callbacks.composition import FAMILIES, RULES, composition_matrix_markdown, rules_between
from lightning_micro.callbacks.technique import CompressionTechnique

ROOT = Path(__file__).resolve().parents[2]
EXPORTED = [getattr(callbacks, name) for name in callbacks.__all__]
TECHNIQUES = [cls for cls in EXPORTED if isinstance(cls, type) and issubclass(cls, CompressionTechnique)
              and cls is not CompressionTechnique]


@pytest.mark.parametrize("technique", TECHNIQUES, ids=lambda t: t.__name__)
def test_every_technique_declares_a_family_the_table_knows(technique):
    assert technique.family in FAMILIES
    assert technique.__name__ in FAMILIES[technique.family]


def test_every_rule_names_known_families():
    for rule in RULES:
        assert rule.this in FAMILIES and (rule.other == "*" or rule.other in FAMILIES), rule


def test_a_family_the_table_does_not_name_composes_freely():
    assert rules_between("", "quantization") == [] and rules_between("distillation", "layer_swap") == []


def test_the_docs_matrix_is_the_table_rendered():
    page = (ROOT / "docs" / "composing.md").read_text()
    match = re.search(r"<!-- composition-matrix:start -->\n(.*?)<!-- composition-matrix:end -->", page, re.S)
    assert match, "docs/composing.md has no composition-matrix region"
    assert match.group(1) == composition_matrix_markdown(), "paste composition_matrix_markdown() into the region"
