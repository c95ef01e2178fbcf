"""Greedy layering of overlapping masks into a stack of label maps, never overwriting.

Sources whose regions of one category may overlap (COCO instances, per-concept mask
files of the ``folder`` adapter) paint each region into the first layer that is free
under it; a region that fits nowhere opens a new layer. So every label's pixels (any
layer) are exactly the union of its masks, same-label overlaps share a layer, and
layer 0 holds every region that met no conflict.
"""

from __future__ import annotations

import numpy as np


def paint_layers(
    layers: list[np.ndarray],
    label: int,
    mask: np.ndarray,
    box: tuple[slice, slice],
    shape: tuple[int, int],
) -> int:
    """Add one annotation (``mask``: bool, the crop ``box`` of the image) to a layer stack.

    It goes into the first layer where every pixel under it is 0 or already ``label``
    (so nothing is overwritten and same-class overlaps share a layer), or into a new
    layer appended to ``layers``. Returns the layer index used.
    """
    for k, layer in enumerate(layers):
        region = layer[box]
        under = region[mask]
        if np.all((under == 0) | (under == label)):
            region[mask] = label
            return k
    layer = np.zeros(shape, np.uint16)
    layer[box][mask] = label
    layers.append(layer)
    return len(layers) - 1
