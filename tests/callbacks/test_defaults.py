"""A callback built in Python with no arguments does what the README documents: its defaults are the defaults of
its conf/compression/<name>.yaml node."""

from __future__ import annotations

import inspect

import pytest
import yaml

from lightning_micro.callbacks import (
    GradualMagnitudePruning,
    KnowledgeDistillation,
    LayerDropping,
    LowRankDecomposition,
    QuantizationAwareTraining,
    StructuredPruning,
    TTLayerSwap,
)
from tests.helpers.config import CONF

CLASSES = {"gmp": GradualMagnitudePruning, "qat": QuantizationAwareTraining, "tt": TTLayerSwap,
           "lowrank": LowRankDecomposition, "structured": StructuredPruning, "layerdrop": LayerDropping,
           "distill": KnowledgeDistillation}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", list(CLASSES))
def test_python_defaults_are_the_documented_yaml_defaults(name):
    node = yaml.safe_load((CONF / "compression" / f"{name}.yaml").read_text())[name]
    built_from_yaml = CLASSES[name](**{k: v for k, v in node.items() if k != "_target_"})
    built_bare = CLASSES[name]()
    signature = inspect.signature(CLASSES[name].__init__).parameters
    assert set(node) - {"_target_"} == set(signature) - {"self"}  # every argument documented in the YAML
    for key in signature:
        if key == "self":
            continue
        assert _plain(getattr(built_bare, key)) == _plain(getattr(built_from_yaml, key)), key
