"""Shared helpers for the dissection tests: tiny stores and an independent, slow
reference implementation of Network Dissection written from the published definitions
(plain numpy loops: per image, per unit, per concept), which the fast engine must match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from broden.dissect.synthetic import write_store


@dataclass
class TinyStore:
    path: Path
    images: np.ndarray
    pixel: dict[str, np.ndarray]
    image_labels: dict[str, np.ndarray]
    concepts: list[tuple[str, str]]

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def label_size(self) -> int:
        return next(iter(self.pixel.values())).shape[-1]


def random_labels_store(
    path: Path,
    n: int = 12,
    label_size: int = 16,
    seed: int = 0,
    order: np.ndarray | None = None,
    shard_size: int = 5,
) -> TinyStore:
    """Random label maps with everything the definitions care about: overlapping layers,
    a concept in two categories' arrays, concepts in two layers at one pixel, whole-image
    labels (2 slots), images lacking a category, ids whose primary category differs from
    the array they appear in. ``order`` permutes the images (same content)."""
    rng = np.random.default_rng(seed)
    L = label_size
    concepts = (
        [(f"col{i}", "color") for i in range(3)]  # ids 1-3
        + [(f"tex{i}", "texture") for i in range(2)]  # ids 4-5
        + [(f"part{i}", "part") for i in range(4)]  # ids 6-9
        + [(f"obj{i}", "object") for i in range(5)]  # ids 10-14
        + [(f"scene{i}", "scene") for i in range(2)]  # ids 15-16
    )
    color = rng.integers(0, 4, size=(n, 1, L, L))
    obj = np.where(rng.random((n, 1, L, L)) < 0.7, rng.integers(10, 15, size=(n, 1, L, L)), 0)
    # object 13 also shows up in the part layers (its primary category stays object), and
    # part 6 sometimes in both part layers at once
    part = np.where(rng.random((n, 2, L, L)) < 0.4, rng.integers(6, 10, size=(n, 2, L, L)), 0)
    part[:, 1][rng.random((n, L, L)) < 0.05] = 13
    both = rng.random((n, L, L)) < 0.1
    part[:, 0][both] = 6
    part[:, 1][both] = 6
    # images 0 and 1 have no object or part label at all; image 2 no color
    obj[:2] = 0
    part[:2] = 0
    color[2] = 0
    scene = np.where(rng.random((n, 1)) < 0.7, rng.integers(15, 17, size=(n, 1)), 0)
    texture = np.where(rng.random((n, 2)) < 0.4, rng.integers(4, 6, size=(n, 2)), 0)
    images = rng.integers(0, 256, size=(n, 2 * L, 2 * L, 3), dtype=np.uint8)
    pixel = {"color": color, "part": part, "object": obj}
    image_labels = {"scene": scene, "texture": texture}
    if order is not None:
        images = images[order]
        pixel = {k: v[order] for k, v in pixel.items()}
        image_labels = {k: v[order] for k, v in image_labels.items()}
    pixel = {k: v.astype(np.uint16) for k, v in pixel.items()}
    image_labels = {k: v.astype(np.uint16) for k, v in image_labels.items()}
    write_store(path, images, pixel, image_labels, concepts, shard_size=shard_size)
    return TinyStore(path, images, pixel, image_labels, concepts)


# -- the reference implementation ------------------------------------------------------------


def ref_threshold(values: np.ndarray, quantile: float, method: str) -> float:
    """One unit's threshold from all its values."""
    x = np.sort(np.asarray(values, np.float64).ravel())
    if method == "exact":
        return float(np.quantile(x, 1 - quantile))
    # NetDissect-Lite: level linspace(0, 1, 1000)[int(1000 (1 - q) - 1)] read off the
    # piecewise-linear curve through (0, min), ((k - 1/2)/n, x_k) for k = 1..n, (1, max)
    n = len(x)
    p = np.linspace(0.0, 1.0, 1000)[int(1000 * (1 - quantile) - 1)]
    xs = [0.0] + [(k - 0.5) / n for k in range(1, n + 1)] + [1.0]
    ys = [x[0]] + list(x) + [x[-1]]
    for j in range(len(xs) - 1):
        if xs[j] <= p < xs[j + 1]:
            return float(ys[j] + (p - xs[j]) * (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]))
    return float(ys[-1])


def ref_upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, half-pixel centres, clamped edges, written out pixel by pixel."""
    h, w = a.shape
    out = np.zeros((size, size), np.float64)
    for i in range(size):
        sy = max((i + 0.5) * h / size - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1 = min(y0 + 1, h - 1)
        ly = sy - y0
        for j in range(size):
            sx = max((j + 0.5) * w / size - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1 = min(x0 + 1, w - 1)
            lx = sx - x0
            top = (1 - lx) * a[y0, x0] + lx * a[y0, x1]
            bot = (1 - lx) * a[y1, x0] + lx * a[y1, x1]
            out[i, j] = (1 - ly) * top + ly * bot
    return out


@dataclass
class RefResult:
    thresholds: np.ndarray
    intersection: np.ndarray  # units × concepts (ids 1..C)
    concept_area: np.ndarray
    unit_area: dict[str, np.ndarray]  # mode -> units × categories
    categories: list[str]
    iou: dict[str, np.ndarray]


def reference(
    ts: TinyStore,
    acts: np.ndarray,
    quantile: float = 0.005,
    method: str = "exact",
    thresholds: np.ndarray | None = None,
) -> RefResult:
    """Network Dissection from the definitions, one image, unit and concept at a time."""
    N, U = acts.shape[:2]
    L = ts.label_size
    C = len(ts.concepts)
    cats = [
        c
        for c in ("color", "object", "part", "material", "scene", "texture")
        if c in ts.pixel or c in ts.image_labels
    ]
    cats = sorted(cats, key=["color", "texture", "material", "part", "object", "scene"].index)
    primary = {i + 1: cats.index(cat) for i, (_, cat) in enumerate(ts.concepts)}
    if thresholds is None:
        thresholds = np.array([ref_threshold(acts[:, u], quantile, method) for u in range(U)])
    inter = np.zeros((U, C), np.int64)
    area = np.zeros(C, np.int64)
    ua = {m: np.zeros((U, len(cats)), np.int64) for m in ("original", "lite", "plain")}
    for i in range(N):
        layers = [ts.pixel[c][i, k] for c in ts.pixel for k in range(ts.pixel[c].shape[1])]
        whole = [int(v) for c in ts.image_labels for v in ts.image_labels[c][i] if v]
        ids_here = {int(v) for lay in layers for v in np.unique(lay) if v} | set(whole)
        present = {primary[c] for c in ids_here}
        whole_cats = {primary[c] for c in whole}
        for c in range(1, C + 1):
            area[c - 1] += sum(int((lay == c).sum()) for lay in layers) + L * L * whole.count(c)
        for u in range(U):
            mask = ref_upsample(acts[i, u], L) > thresholds[u]
            a = int(mask.sum())
            if a == 0:
                continue
            overlap = {primary[int(v)] for lay in layers for v in np.unique(lay[mask]) if v}
            for k in range(len(cats)):
                ua["plain"][u, k] += a
                if k in present:
                    ua["original"][u, k] += a
                if k in overlap or k in whole_cats:
                    ua["lite"][u, k] += a
            for c in range(1, C + 1):
                inter[u, c - 1] += sum(int((mask & (lay == c)).sum()) for lay in layers)
                inter[u, c - 1] += a * whole.count(c)
    iou = {}
    for m in ua:
        out = np.zeros((U, C))
        for u in range(U):
            for c in range(1, C + 1):
                d = ua[m][u, primary[c]] + area[c - 1] - inter[u, c - 1]
                out[u, c - 1] = inter[u, c - 1] / d if d > 0 else 0.0
        iou[m] = out
    return RefResult(thresholds, inter, area, ua, cats, iou)
