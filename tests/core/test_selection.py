import pytest

from lightning_micro.core.selection import check_pattern, name_matches, select_parameters
from lightning_micro.models import LeNet5, MobileNet


def test_default_selects_weights_of_linear_and_conv_never_biases():
    assert select_parameters(LeNet5()) == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]


def test_glob_and_regex_patterns():
    net = LeNet5()
    assert select_parameters(net, include=["fc*"]) == ["fc1.weight", "fc2.weight"]
    assert select_parameters(net, include=["re:conv[12]\\.weight"]) == ["conv1.weight", "conv2.weight"]
    assert select_parameters(net, exclude=["re:.*fc2.*"]) == ["conv1.weight", "conv2.weight", "fc1.weight"]


def test_module_types_by_class_name():
    net = MobileNet([1, 28, 28], 10, 0.25)
    linear = select_parameters(net, module_types=["Linear"])
    assert linear == ["classifier.weight"]
    assert not any("bn" in n or n.endswith(".1.weight") for n in select_parameters(net))  # no BatchNorm


def test_regex_matches_the_whole_name():
    assert name_matches("fc1.weight", "re:fc1.*")
    assert not name_matches("net.fc1.weight", "re:fc1.*")


def test_bad_regex():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        check_pattern("re:fc[")
