"""The report's pictures: unit masks (upsampled and thresholded as the tally does),
concept masks, their coverage at the tile size, outlines, dimming, and strips of tiles."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from broden.store import BrodenStore

#: brightness kept outside a mask (the original report's 20 %)
DIM = 0.2


UNIT_OUTLINE = (255, 221, 0)


CONCEPT_OUTLINE = (0, 229, 255)
#: the outline of a unit's formula's mask (``--formulas``): magenta
FORMULA_OUTLINE = (255, 64, 255)


GAP = 3  # pixels between the tiles of a strip


def unit_masks(maps: torch.Tensor, thresholds: Any, size: int) -> torch.Tensor:
    """Masks (n, k, size, size) of n units' maps (n, k, h, w) with ``thresholds`` (n,):
    bilinear upsampling with half-pixel centres and clamped edges
    (``F.interpolate(mode="bilinear", align_corners=False)``, the rule of the tally, whose
    :func:`broden.dissect.tally.upsample_reference` gives the same values to rounding), in the
    maps' dtype, compared strictly with each unit's threshold as the tally compares. A map
    whose maximum is at or below its threshold has an empty mask (bilinear values never
    exceed the largest source value), so only the others are upsampled."""
    import torch
    import torch.nn.functional as F

    from broden.dissect.tally import threshold_for_dtype

    n, k, h, w = maps.shape
    t = threshold_for_dtype(np.asarray(thresholds, np.float64), maps.dtype).to(maps.device)
    t = t.view(n, 1).expand(n, k)
    active = maps.flatten(2).amax(dim=2) > t
    out = torch.zeros((n, k, size, size), dtype=torch.bool, device=maps.device)
    if bool(active.any()):
        up = F.interpolate(
            maps[active].unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
        )
        out[active] = up[:, 0] > t[active].view(-1, 1, 1)
    return out


def coverage(masks: np.ndarray, tile: int) -> np.ndarray:
    """The share of each tile pixel that boolean masks (..., S, S) cover, at ``tile`` ≤ S
    pixels (area averaging): float32 (..., tile, tile)."""
    S = masks.shape[-1]
    m = np.ascontiguousarray(masks).view(np.uint8)
    if tile == S:
        return m.astype(np.float32)
    r = S // tile
    if S % tile == 0 and r < 16:
        acc = np.zeros((*m.shape[:-2], tile, tile), np.uint8)
        for dy in range(r):
            for dx in range(r):
                acc += m[..., dy::r, dx::r]
        return acc * np.float32(1.0 / (r * r))
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(m.reshape(-1, 1, S, S)).float()
    x = F.interpolate(x, size=(tile, tile), mode="area")
    return x.reshape(*m.shape[:-2], tile, tile).numpy()


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion over the last two axes, edges replicated (a mask that touches
    the image's edge is not outlined along it)."""
    pad = [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(mask, pad, mode="edge")
    c = p[..., 1:-1, 1:-1]
    return c & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner border of boolean masks (..., H, W), ``width`` pixels thick."""
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def draw_masks(
    images: np.ndarray,
    cover: np.ndarray | None,
    color: tuple[int, int, int],
    frame: np.ndarray | None = None,
    width: int = 1,
) -> np.ndarray:
    """Tiles (k, T, T, 3) uint8 dimmed to :data:`DIM` outside their masks (``cover``: the
    share of each pixel inside, (k, T, T); edges blend), the border of each mask (pixels
    at least half inside) drawn in ``color``; ``frame[j]`` also draws tile j's edge (a
    whole-image label). ``cover`` None: the tiles unchanged."""
    if cover is None:
        return images
    factor = np.float32(DIM) + np.float32(1.0 - DIM) * cover.astype(np.float32).clip(0.0, 1.0)
    out = (images * factor[..., None] + np.float32(0.5)).astype(np.uint8)
    out[outline(cover >= 0.5, width)] = color
    if frame is not None and frame.any():
        f = out[frame]
        f[:, :width], f[:, -width:], f[:, :, :width], f[:, :, -width:] = (color,) * 4
        out[frame] = f
    return out


def concept_mask(
    pixel: Mapping[str, np.ndarray], image: Mapping[str, np.ndarray], cid: int, size: int
) -> tuple[np.ndarray, bool]:
    """The pixels of concept ``cid`` in one image's labels (``BrodenStore.labels``), at
    ``size`` (nearest neighbour from the label size), and whether it is a whole-image
    label there (then the mask is the whole image)."""
    if any((v == cid).any() for v in image.values()):
        return np.ones((size, size), bool), True
    L = next(iter(pixel.values())).shape[-1] if pixel else size
    m = np.zeros((L, L), bool)
    for arr in pixel.values():
        m |= (arr == cid).any(axis=0)
    # nearest neighbour with half-pixel centres
    idx = np.minimum(((np.arange(size) + 0.5) * L / size).astype(np.int64), L - 1)
    return m[idx][:, idx], False


def formula_image_mask(
    pixel: Mapping[str, np.ndarray],
    image: Mapping[str, np.ndarray],
    formula: Any,
    ids: Mapping[str, int],
    size: int,
) -> np.ndarray:
    """The pixels of a formula (``formulas.json``'s form: a concept name or ``[op, F,
    name]``) in one image's labels, at ``size``; ``ids``: concept name → id. A name not
    in ``ids`` covers nothing."""
    if isinstance(formula, str):
        cid = ids.get(formula)
        return concept_mask(pixel, image, cid, size)[0] if cid else np.zeros((size, size), bool)
    op, inner, name = formula
    f = formula_image_mask(pixel, image, inner, ids, size)
    c = formula_image_mask(pixel, image, name, ids, size)
    return {"or": f | c, "and": f & c, "and_not": f & ~c}[op]


def strip(tiles: np.ndarray) -> Any:
    """Tiles (k, T, T, 3) side by side, :data:`GAP` white pixels apart, as a PIL image."""
    from PIL import Image

    k, T = tiles.shape[:2]
    canvas = np.full((T, k * T + (k - 1) * GAP, 3), 255, np.uint8)
    for j in range(k):
        canvas[:, j * (T + GAP) : j * (T + GAP) + T] = tiles[j]
    return Image.fromarray(canvas)


class TileCache:
    """Store images shrunk to the tile size, and labels, read once each (bounded caches:
    top images repeat across units)."""

    def __init__(self, store: BrodenStore, tile: int, capacity: int = 1024):
        self.store, self.size, self.capacity = store, tile, capacity
        self._tiles: OrderedDict[int, np.ndarray] = OrderedDict()
        self._labels: OrderedDict[int, Any] = OrderedDict()

    def _get(self, cache: OrderedDict[int, Any], i: int, read: Callable[[int], Any]) -> Any:
        if i in cache:
            cache.move_to_end(i)
            return cache[i]
        value = cache[i] = read(i)
        if len(cache) > self.capacity:
            cache.popitem(last=False)
        return value

    def _read_tile(self, i: int) -> np.ndarray:
        from PIL import Image

        im = self.store.image(i)
        if im.shape[0] == self.size:
            return im
        small = Image.fromarray(im).resize((self.size, self.size), Image.Resampling.LANCZOS)
        return np.asarray(small)

    def tile(self, i: int) -> np.ndarray:
        return self._get(self._tiles, i, self._read_tile)

    def labels(self, i: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        labels: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
        labels = self._get(self._labels, i, self.store.labels)
        return labels
