"""The one instantiate site: malformed nodes fail with the key named, never skipped."""

import pytest

from lightning_micro.run.instantiate import ConfigError, instantiate, instantiate_each


def test_node_without_target_is_an_error():
    with pytest.raises(ConfigError, match=r"^callbacks\.early: this node needs a _target_ .*keys: patience"):
        instantiate_each({"early": {"patience": 3}}, "callbacks")


def test_non_mapping_node_is_an_error():
    with pytest.raises(ConfigError, match=r"^logger\.csv: expected a config node"):
        instantiate_each({"csv": "yes"}, "logger")


def test_constructor_errors_name_the_key():
    node = {"_target_": "lightning_micro.models.LeNet300", "input_shape": [3, 32, 32]}
    with pytest.raises(ConfigError, match=r"^model\.net: .*single-channel") as info:
        instantiate(node, "model.net")
    assert info.value.key == "model.net"


def test_unimportable_target_names_the_key():
    with pytest.raises(ConfigError, match=r"^data: .*no_such_module"):
        instantiate({"_target_": "no_such_module.Thing"}, "data")


def test_nested_config_errors_keep_the_full_key():
    node = {
        "_target_": "lightning_micro.run.classifier.ClassifierModule",
        "_recursive_": False,
        "net": {"_target_": "lightning_micro.models.LeNet300", "input_shape": [1, 8, 8]},
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": -1.0},
        "input_shape": [1, 8, 8],
    }
    with pytest.raises(ConfigError, match=r"^model\.optimizer: torch\.optim\.SGD\(lr=-1\.0\) rejected its "
                                          r"arguments: Invalid learning rate: -1\.0"):
        instantiate(node, "model")


def test_none_group_is_empty():
    assert instantiate_each(None, "callbacks") == []
