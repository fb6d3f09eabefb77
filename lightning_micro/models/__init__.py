"""The model zoo: plain ``nn.Module`` networks that know nothing of compression or Lightning.

Chosen with ``model=<name>``: lenet300, lenet5, mobilenet, mobilenetv2, resnet20, shufflenet, vit_tiny,
tv_mobilenet_v3_small (torchvision's). Artifacts and checkpoints may
name every class listed in ``__all__`` (the artifact layer trusts them, :mod:`lightning_micro.artifact.trust`).
"""

from lightning_micro.models.lenet import LeNet5, LeNet300
from lightning_micro.models.library import torchvision_mobilenet_v3_small
from lightning_micro.models.mobilenet import MobileNet
from lightning_micro.models.mobilenet_v2 import MobileNetV2
from lightning_micro.models.resnet import ResNet20
from lightning_micro.models.shufflenet import ShuffleNet
from lightning_micro.models.vit import VisionTransformer

__all__ = ["LeNet300", "LeNet5", "MobileNet", "MobileNetV2", "ResNet20", "ShuffleNet", "VisionTransformer",
           "torchvision_mobilenet_v3_small"]
