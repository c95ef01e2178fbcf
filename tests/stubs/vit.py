"""A tiny ViT whose token k of every output carries k (so a wrong axis, prefix or grid
read is visible): patches of 16, ``prefix`` class/register tokens, 4 features."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(4, 4)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + 0 * self.mlp(t)


class TinyViT(nn.Module):
    def __init__(self, prefix: int = 1, tuple_out: bool = False) -> None:
        super().__init__()
        self.prefix, self.tuple_out = prefix, tuple_out
        self.patch_embed = nn.Conv2d(3, 4, 16, 16)
        self.blocks = nn.Sequential(Block(), Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor]:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        n = self.prefix + t.shape[1]
        tokens = torch.arange(n, dtype=t.dtype).view(1, n, 1).expand(len(t), n, 4)
        out = self.blocks(tokens + 0 * t.sum())
        return (out,) if self.tuple_out else out
