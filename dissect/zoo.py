"""Built-in models for demos, tests and benchmarks, written here so that they need no
torchvision or timm.

``dissect.zoo:resnet18`` and ``dissect.zoo:resnet50`` are ResNet-18 and ResNet-50 (He et al.,
2016) with torchvision's module names and state-dict keys (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer4.2.bn3``, ``layer1.0.downsample.0``, ``fc``), so
torchvision's ``resnet18`` / ``resnet50`` weights load into them with ``--weights``
(ResNet-50 is torchvision's "v1.5": the stride of a bottleneck is on its 3×3 convolution).

``dissect.zoo:vit_b_16`` is ViT-B/16 (Dosovitskiy et al., 2021): 16 px patches, 768
dimensions, 12 pre-norm blocks of 12 heads with 3072-wide MLPs, a class token and learned
position embeddings for 224 px (interpolated for another ``--input-size``), with timm's
``vit_base_patch16_224`` key names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.mlp.fc1``,
``norm``, ``head``). Its dissectable layers: ``blocks.N`` (B, 197, 768) tokens,
``blocks.N.mlp.act`` the MLP's hidden neurons (B, 197, 3072) and ``patch_embed`` the patch
grid (B, 768, 14, 14); ``num_prefix_tokens = 1`` tells the dissection to drop the class token.

Without weights every model is initialised as torchvision (ResNets) or timm (ViT)
initialises it, from a fixed seed: the same random network every time (so its results are
reproducible and cacheable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride here, as torchvision's) → 1×1 to ``planes * 4`` channels."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, out: int, stride: int) -> nn.Module | None:
    """The shortcut's projection (``downsample.0`` conv, ``downsample.1`` BN) when needed."""
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNet(nn.Module):
    """ResNet of basic or bottleneck blocks; torchvision's layout and key names."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int = 1000,
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
    ):
        super().__init__()
        self.block = block
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        self.layer1 = self._stage(64, blocks[0], 1)
        self.layer2 = self._stage(128, blocks[1], 2)
        self.layer3 = self._stage(256, blocks[2], 2)
        self.layer4 = self._stage(512, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = [self.block(self.inplanes, planes, stride)]
        self.inplanes = planes * self.block.expansion
        layers += [self.block(self.inplanes, planes) for _ in range(n - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init(model: nn.Module, seed: int) -> None:
    """torchvision's initialisation (Kaiming-normal convs, unit BN, default Linear),
    drawn from a private generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound, generator=g)
                nn.init.uniform_(m.bias, -bound, bound, generator=g)


def resnet18(num_classes: int = 1000, seed: int = 0) -> ResNet:
    """ResNet-18 with torchvision-compatible keys; random weights from ``seed``."""
    model = ResNet((2, 2, 2, 2), num_classes)
    _init(model, seed)
    return model


def resnet50(num_classes: int = 1000, seed: int = 0) -> ResNet:
    """ResNet-50 (bottleneck blocks, 25,557,032 parameters) with torchvision-compatible
    keys; random weights from ``seed``."""
    model = ResNet((3, 4, 6, 3), num_classes, Bottleneck)
    _init(model, seed)
    return model


class PatchEmbed(nn.Module):
    """Images (B, 3, H, W) → the patch grid (B, dim, H/patch, W/patch)."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Batch-first multi-head self-attention: (B, T, D) → (B, T, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, D / heads)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a class token and learned position embeddings; timm's key names."""

    num_prefix_tokens = 1  # the class token, before the patch grid in every block's output

    def __init__(
        self,
        image_size: int = 224,
        patch: int = 16,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        hidden: int = 3072,
        num_classes: int = 1000,
    ):
        super().__init__()
        self.grid = image_size // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def position(self, h: int, w: int) -> torch.Tensor:
        """The position embeddings for an h×w patch grid (bicubic from the trained grid)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        g = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, g.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.position(h, w))
        return self.head(self.norm(x)[:, 0])


def _init_vit(model: VisionTransformer, seed: int) -> None:
    """timm's initialisation: truncated-normal (σ 0.02) Linear weights and position
    embeddings, zero biases, near-zero class token, PyTorch's default patch projection;
    drawn from a private generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        nn.init.trunc_normal_(model.pos_embed, std=0.02, generator=g)
        nn.init.normal_(model.cls_token, std=1e-6, generator=g)
        weight, bias = model.patch_embed.proj.weight, model.patch_embed.proj.bias
        assert bias is not None
        bound = 1 / math.sqrt(weight[0].numel())
        nn.init.uniform_(weight, -bound, bound, generator=g)
        nn.init.uniform_(bias, -bound, bound, generator=g)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, generator=g)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def vit_b_16(num_classes: int = 1000, seed: int = 0) -> VisionTransformer:
    """ViT-B/16 at 224 px (86,567,656 parameters) with timm-compatible keys; random
    weights from ``seed``."""
    model = VisionTransformer(num_classes=num_classes)
    _init_vit(model, seed)
    return model
