"""The 8x8 digits as 3x32x32 images for the library networks (library_nets.py), and the LightningModule a user
writes around any of them, following the README's contract."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_micro import CompressionMixin
from lightning_micro.data import DigitsDataModule
from tests.helpers.library_nets import INPUT_SHAPE, NETWORKS, build


class RGB32Digits(DigitsDataModule):
    """The 8x8 digits upsampled to 32x32 and repeated over 3 channels: inputs the library networks take."""

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__(input_shape=INPUT_SHAPE, batch_size=batch_size, mean=(0.3053,) * 3, std=(0.3760,) * 3)

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = super().load_split(train)
        images = F.interpolate(images, size=INPUT_SHAPE[1:], mode="bilinear", align_corners=False)
        return images.expand(-1, INPUT_SHAPE[0], -1, -1).contiguous(), labels


class LibraryClassifier(CompressionMixin, L.LightningModule):
    """What a user writes around a library network: the contract's mixin, the attribute that holds the network, a
    spec naming its factory, their own steps and optimizer."""

    compressed_net_name = "net"

    def __init__(self, network: str, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build(network)
        self.example_input_array = torch.zeros(1, *INPUT_SHAPE)
        self.test_accuracy = MulticlassAccuracy(10, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y) + self.compression_loss(batch=batch)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_accuracy(self(x), y)
        self.log("test_acc", self.test_accuracy, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    def compressed_net_spec(self):
        target, kwargs = NETWORKS[self.hparams.network]
        return {"_target_": target, **kwargs}, ""
