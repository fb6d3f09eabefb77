"""Config targets that moved when the package was laid out in floors: a config naming the old path is told the
new one in one line, and every new path builds."""

from __future__ import annotations

import hydra.utils
import pytest

from lightning_micro.run.instantiate import MOVED_TARGETS, ConfigError, instantiate


@pytest.mark.parametrize("old", sorted(MOVED_TARGETS))
def test_an_old_target_names_the_new_one(old):
    with pytest.raises(ConfigError, match=rf"^model: _target_ {old} has moved: write _target_: "
                                          rf"{MOVED_TARGETS[old]}$"):
        instantiate({"_target_": old}, "model")


@pytest.mark.parametrize("new", sorted(set(MOVED_TARGETS.values())))
def test_every_new_target_resolves(new):
    assert callable(hydra.utils.get_class(new))
