"""A LightningModule as a user writes one (not from the zoo): its own network with a residual block and a
depthwise convolution, its own training_step and optimizer; the one line of the compression contract is
``CompressionMixin`` among its bases (plus ``compressed_net_name``, since int8 replaces the network). Its
networks are in user_nets.py."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_micro import CompressionMixin
from tests.helpers.user_nets import ResidualDepthwiseNet, ResidualStack, TokenAttentionNet


class DigitsClassifier(CompressionMixin, L.LightningModule):
    compressed_net_name = "backbone"

    def __init__(self, width: int = 16, lr: float = 5e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = ResidualDepthwiseNet(width)
        self.example_input_array = torch.zeros(1, 1, 8, 8)
        self.test_accuracy = MulticlassAccuracy(10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        return loss + self.compression_loss(batch=batch)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_accuracy(self(x), y)
        self.log("test_acc", self.test_accuracy, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class FactoryNamed(DigitsClassifier):
    """Names the factory of its network instead of being rebuilt whole."""

    def compressed_net_spec(self):
        return {"_target_": "tests.helpers.user_nets.ResidualDepthwiseNet", "width": self.hparams.width}, ""


class PlainClassifier(L.LightningModule):
    """The same without the contract."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResidualDepthwiseNet(8)

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class UnsavedArguments(CompressionMixin, PlainClassifier):
    """Takes an init argument but does not save it (no save_hyperparameters): its artifact cannot be rebuilt."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.backbone = ResidualDepthwiseNet(width)


class ResidualStackClassifier(DigitsClassifier):
    """The same training code around a stack of the user's residual blocks."""

    def __init__(self, width: int = 16, depth: int = 4, lr: float = 5e-3) -> None:
        super().__init__(width, lr)
        self.save_hyperparameters()
        self.backbone = ResidualStack(width, depth)


class AttentionClassifier(DigitsClassifier):
    """DigitsClassifier around TokenAttentionNet: torch's MultiheadAttention in a user's module."""

    def __init__(self, width: int = 16, lr: float = 5e-3) -> None:
        super().__init__(width, lr)
        self.backbone = TokenAttentionNet(width)

    def compressed_net_spec(self):
        return {"_target_": "tests.helpers.user_nets.TokenAttentionNet", "width": self.hparams.width}, ""
