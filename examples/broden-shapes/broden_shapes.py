"""broden-shapes: a synthetic concept source, the smallest complete broden adapter.

Each image is a plain background with a few filled circles and squares on it, drawn
from a random generator seeded by (``seed``, image index): a sample is the same on
every run and in every build worker. Every pixel of a shape is labeled in category
``object`` (1 = circle, 2 = square); a later shape covers an earlier one. No files
are needed::

    sources:
      - adapter: shapes
        count: 24      # images (default 24)
        size: 96       # width and height in pixels (default 96)
        seed: 0
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from broden.adapters import Adapter, AdapterOptions, SourceSample

CIRCLE, SQUARE = 1, 2


class ShapesOptions(AdapterOptions):
    """The config keys of a ``shapes`` source (unknown keys are an error)."""

    count: int = Field(24, ge=1, description="number of images")
    size: int = Field(96, ge=16, description="image width and height in pixels")
    seed: int = Field(0, ge=0, description="random seed of the whole set")


class Shapes(Adapter):
    """Random filled circles and squares on a plain background."""

    name = "shapes"
    kinds = {"object": "pixel"}
    Options = ShapesOptions
    options: ShapesOptions

    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        return {"object": {CIRCLE: ["circle"], SQUARE: ["square"]}}

    def __len__(self) -> int:
        return self.options.count

    def source_id(self, index: int) -> str:
        return f"shape_{index:04d}"

    def load(self, index: int) -> SourceSample:
        n = self.options.size
        rng = np.random.default_rng([self.options.seed, index])
        image = np.empty((n, n, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)  # background colour
        labels = np.zeros((n, n), np.uint8)
        y, x = np.mgrid[:n, :n]
        for _ in range(rng.integers(2, 6)):
            shape = rng.choice([CIRCLE, SQUARE])
            cy, cx = rng.integers(0, n, 2)
            r = rng.integers(n // 10, n // 4)
            dy, dx = abs(y - cy), abs(x - cx)
            inside = np.hypot(dy, dx) < r + 0.5 if shape == CIRCLE else np.maximum(dy, dx) <= r
            image[inside] = rng.integers(0, 256, 3)
            labels[inside] = shape
        return SourceSample(self.source_id(index), image, pixel={"object": labels[None]})
