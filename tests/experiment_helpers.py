"""Synthetic setups for the experiment tests: a store whose images are painted blocks
(each object concept a fixed color), a model whose units copy the color channels (so
each of them copies one concept's mask), and activations with planted detector units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from broden.dissect.synthetic import write_store
from tests.dissect_helpers import TinyStore

#: RGB of object concepts 1, 2, 3 (the others, and unlabeled pixels, are black)
PAINT = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
N_OBJECTS = 8


def block_store(
    path: Path,
    n: int = 24,
    label_size: int = 16,
    block: int = 4,
    fill: float = 0.9,
    seed: int = 0,
) -> TinyStore:
    """Label maps of ``block``×``block`` squares, each (with probability ``fill``) one
    object concept (ids 1-8, uniformly) or none; images twice the label size with
    objects 1-3 painted red, green, blue; two whole-image texture concepts (ids 9, 10)
    and a scene (11) on some images."""
    rng = np.random.default_rng(seed)
    L, g = label_size, label_size // block
    concepts = [(f"obj{i}", "object") for i in range(N_OBJECTS)]
    concepts += [("tex0", "texture"), ("tex1", "texture"), ("scene0-s", "scene")]
    cells = rng.integers(1, N_OBJECTS + 1, size=(n, g, g))
    cells[rng.random((n, g, g)) >= fill] = 0
    obj = cells.repeat(block, 1).repeat(block, 2)[:, None].astype(np.uint16)
    images = np.zeros((n, 2 * L, 2 * L, 3), np.uint8)
    big = obj[:, 0].repeat(2, 1).repeat(2, 2)
    for cid, rgb in PAINT.items():
        images[big == cid] = rgb
    texture = np.where(rng.random((n, 1)) < 0.5, rng.integers(9, 11, size=(n, 1)), 0)
    scene = np.where(rng.random((n, 1)) < 0.5, 11, 0)
    pixel = {"object": obj}
    image_labels = {
        "texture": texture.astype(np.uint16),
        "scene": scene.astype(np.uint16),
    }
    write_store(path, images, pixel, image_labels, concepts, shard_size=8)
    return TinyStore(path, images, pixel, image_labels, concepts)


class PaintedNet(nn.Module):
    """``pool``: 2×2 average pooling of the input (B, 3, L, L for the block store with
    ``normalize="none"``: exactly the paint's channels at label resolution); ``mix``:
    units 0-2 copy red, green, blue (objects 1-3), unit 3 their sum (any of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.mix = nn.Conv2d(3, 4, 1, bias=False)
        w = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
        with torch.no_grad():
            self.mix.weight.copy_(w[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.pool(x)).mean(dim=(2, 3))


def painted_net() -> PaintedNet:
    """The ``tests.experiment_helpers:painted_net`` model spec."""
    return PaintedNet()


def planted_activations(
    ts: TinyStore,
    units: int = 64,
    planted: int = 8,
    size: int = 8,
    noise: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """(N, units, size, size) float32: unit u < ``planted`` is the mask of object u + 1
    (averaged down to ``size``) plus a little noise; the other units are noise."""
    rng = np.random.default_rng(seed)
    obj = ts.pixel["object"][:, 0]
    n, L = obj.shape[0], obj.shape[-1]
    f = L // size
    acts = rng.normal(0, noise, size=(n, units, size, size))
    for u in range(planted):
        m = (obj == u + 1).astype(np.float64).reshape(n, size, f, size, f).mean(axis=(2, 4))
        acts[:, u] = m + rng.normal(0, 0.02, size=m.shape)
    return acts.astype(np.float32)
