"""The model zoo (plain ``nn.Module`` networks) and the LightningModule that trains them.

Chosen with ``model=<name>``: lenet300, lenet5, mobilenet, mobilenetv2, resnet20.
"""

from lightning_micro.models.classifier import ClassifierModule
from lightning_micro.models.lenet import LeNet5, LeNet300
from lightning_micro.models.mobilenet import MobileNet
from lightning_micro.models.mobilenet_v2 import MobileNetV2
from lightning_micro.models.resnet import ResNet20

__all__ = ["ClassifierModule", "LeNet300", "LeNet5", "MobileNet", "MobileNetV2", "ResNet20"]
