"""Networks from the libraries people use (torchvision, timm, torch's own TransformerEncoder), built untrained and
small, each as the plain factory a user's ``compressed_net_spec`` names: an artifact naming one loads with torch,
torchvision and timm alone. The LightningModule around them is in library_modules.py."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

INPUT_SHAPE = (3, 32, 32)


def torchvision_net(name: str, **kwargs) -> nn.Module:
    """A torchvision classification network, untrained, with 10 classes."""
    return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)


def torchvision_efficientnet(name: str, width_mult: float, depth_mult: float) -> nn.Module:
    """A torchvision EfficientNet's blocks (MBConv with squeeze-and-excitation and stochastic depth) at another
    width and depth, built by torchvision's own configuration function, untrained, with 10 classes."""
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    blocks, last_channel = _efficientnet_conf(name, width_mult=width_mult, depth_mult=depth_mult)
    return EfficientNet(blocks, dropout=0.2, last_channel=last_channel, num_classes=10)


def timm_net(name: str, **kwargs) -> nn.Module:
    """A timm network, untrained, with 10 classes."""
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def timm_mixer() -> nn.Module:
    """timm's MLP-Mixer (token-mixing and channel-mixing MLPs over 8x8 patches), 4 blocks of width 64."""
    return timm.models.mlp_mixer.MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=4, embed_dim=64)


class PatchTransformer(nn.Module):
    """A user's vision transformer from torch's own layers: 8x8 patches embedded by a convolution, a learned position
    embedding, ``nn.TransformerEncoder`` (pre-norm layers with GELU) and a linear head on the mean token."""

    def __init__(self, width: int = 32, depth: int = 4, heads: int = 4, patch: int = 8) -> None:
        super().__init__()
        tokens = (INPUT_SHAPE[1] // patch) ** 2
        self.patch_embed = nn.Conv2d(INPUT_SHAPE[0], width, patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.encoder(x)).mean(1))


# name -> the factory and its arguments, as the user's compressed_net_spec names them. Width multipliers and small
# depths keep each network small enough for the suite; the architectures' graph shapes are what is tested.
NETWORKS = {
    "tv_mobilenet_v3_small": ("tests.helpers.library_nets.torchvision_net",
                              {"name": "mobilenet_v3_small", "width_mult": 0.25}),
    "tv_shufflenet_v2_x0_5": ("tests.helpers.library_nets.torchvision_net", {"name": "shufflenet_v2_x0_5"}),
    "tv_efficientnet_b0": ("tests.helpers.library_nets.torchvision_efficientnet",
                           {"name": "efficientnet_b0", "width_mult": 0.25, "depth_mult": 0.5}),
    "tv_resnet18": ("tests.helpers.library_nets.torchvision_net", {"name": "resnet18"}),
    "tv_squeezenet1_1": ("tests.helpers.library_nets.torchvision_net", {"name": "squeezenet1_1"}),
    "timm_mobilenetv3_small_050": ("tests.helpers.library_nets.timm_net", {"name": "mobilenetv3_small_050"}),
    "timm_ghostnet_050": ("tests.helpers.library_nets.timm_net", {"name": "ghostnet_050"}),
    "timm_mixer": ("tests.helpers.library_nets.timm_mixer", {}),
    "timm_lcnet_050": ("tests.helpers.library_nets.timm_net", {"name": "lcnet_050"}),
    "timm_vit": ("tests.helpers.library_nets.timm_net",
                 {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4,
                  "num_heads": 3}),
    "torch_transformer": ("tests.helpers.library_nets.PatchTransformer", {}),
}


def build(name: str) -> nn.Module:
    target, kwargs = NETWORKS[name]
    module, _, attr = target.rpartition(".")
    return getattr(__import__(module, fromlist=[attr]), attr)(**kwargs)
