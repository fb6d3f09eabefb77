import pytest
import torch
from torch import nn

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


def test_the_output_layer_is_the_last_layer_writing_the_logits():
    import torchvision

    from lightning_micro.core.selection import output_layers
    from lightning_micro.models import LeNet300, VisionTransformer

    assert output_layers(LeNet300([1, 28, 28], 10), torch.zeros(1, 1, 28, 28)) == ["fc3"]
    vit = VisionTransformer([1, 16, 16], 10, patch_size=4, dim=16, depth=1, num_heads=2, mlp_dim=16)
    assert output_layers(vit, torch.zeros(1, 1, 16, 16)) == ["head"]
    # fully convolutional: SqueezeNet's last 1x1 convolution writes the classes, pooled after it
    squeezenet = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    assert output_layers(squeezenet, torch.zeros(1, 3, 32, 32)) == ["classifier.1"]
    assert squeezenet.training  # put back as it was
    assert output_layers(nn.Flatten(), torch.zeros(1, 3, 4)) == []
