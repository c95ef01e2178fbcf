"""Small complete stores from arrays, for tests, benchmarks and demos of the dissection.

:func:`write_store` writes given images and label arrays as a complete format-1 store
through the writer API of :mod:`broden.store` (the same arrays, shard layout, digests
and attributes a build produces). :func:`random_store` makes one with label maps that
look like Broden's: objects as Voronoi regions, parts inside some objects (two layers),
materials on a coarser partition, colors per pixel, scenes and textures per image.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from broden.adapters.categories import category_sort_key
from broden.removal import STORE, remove_ours
from broden.schema import CategorySpec, CategoryStat, Concept, SourceInfo, StoreAttrs
from broden.store import Block
from broden.store import write_store as write_blocks


def write_store(
    path: str | Path,
    images: np.ndarray,
    pixel: Mapping[str, np.ndarray],
    image_labels: Mapping[str, np.ndarray],
    concepts: Sequence[tuple[str, str]],
    shard_size: int = 16,
    complete: bool = True,
    sources: Sequence[str] | None = None,
) -> Path:
    """Write a store at ``path`` (replacing a broden store there; anything else at
    ``path`` is refused, :func:`~broden.removal.remove_ours`).

    ``images`` (N, S, S, 3) uint8; ``pixel[cat]`` (N, K, L, L) and ``image_labels[cat]``
    (N, K) global concept ids (0 = none); ``concepts[i]`` = (name, primary category) of
    concept id i + 1; ``sources``: each image's source name (default: all ``synthetic``).
    Per-category frequency and coverage are counted from the arrays.
    """
    path = Path(path)
    remove_ours(path, STORE)
    images = np.asarray(images, np.uint8)
    N, S = images.shape[0], images.shape[1]
    src = ["synthetic"] * N if sources is None else [str(x) for x in sources]
    if len(src) != N:
        raise ValueError(f"{len(src)} source names for {N} images")
    L = next(iter(pixel.values())).shape[-1] if pixel else S // 2
    cats = sorted(set(pixel) | set(image_labels), key=category_sort_key)
    specs = [
        CategorySpec(name=c, kind="pixel", layers=int(pixel[c].shape[1]))
        if c in pixel
        else CategorySpec(name=c, kind="image", layers=int(image_labels[c].shape[1]))
        for c in cats
    ]
    C = len(concepts)
    freq = {c: np.zeros(C + 1, np.int64) for c in cats}
    cover = {c: np.zeros(C + 1, np.float64) for c in cats}
    for c in cats:
        for i in range(N):
            if c in pixel:
                counts = np.bincount(pixel[c][i].ravel().astype(np.int64), minlength=C + 1)
                cover[c] += counts / float(L * L)
            else:
                counts = np.bincount(image_labels[c][i].astype(np.int64), minlength=C + 1)
                cover[c] += counts > 0
            freq[c] += counts > 0
    table = []
    for i, (name, primary) in enumerate(concepts, start=1):
        stats = [
            CategoryStat(name=c, frequency=int(freq[c][i]), coverage=float(cover[c][i]))
            for c in cats
            if freq[c][i] > 0 or c == primary
        ]
        stats.sort(key=lambda s: -s.frequency)
        table.append(
            Concept(
                id=i,
                name=name,
                category=primary,
                categories=stats,
                frequency=max((s.frequency for s in stats), default=0),
                coverage=sum(s.coverage for s in stats),
                sources=sorted(set(src)),
            )
        )
    shard = min(shard_size, N)
    attrs = StoreAttrs(
        complete=False,
        images=N,
        image_size=S,
        label_size=L,
        shard_size=shard,
        categories=specs,
        sources=[
            SourceInfo(name=name, adapter="synthetic", categories=cats, images=src.count(name))
            for name in dict.fromkeys(src)
        ],
        build_config={"synthetic": True, "splits": {"train": 0.7, "val": 0.3}},
        build_fingerprint="synthetic",
        package_version="0",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )

    def blocks() -> Iterator[Block]:
        for start in range(0, N, shard):
            stop = min(start + shard, N)
            yield Block(
                images=images[start:stop],
                pixel={c: np.asarray(pixel[c][start:stop], np.uint16) for c in pixel},
                image_labels={
                    c: np.asarray(image_labels[c][start:stop], np.uint16) for c in image_labels
                },
                source=src[start:stop],
                source_id=[f"img{i:06d}" for i in range(start, stop)],
                split=["train" if i % 10 < 7 else "val" for i in range(start, stop)],
                orig_size=np.full((stop - start, 2), S, np.int32),
            )

    write_blocks(path, attrs, table, blocks(), finish=complete)
    return path


def _voronoi(rng: np.random.Generator, L: int, n: int) -> np.ndarray:
    """An L×L partition into n Voronoi cells (cell index per pixel)."""
    seeds = rng.uniform(0, L, size=(n, 2))
    yy, xx = np.mgrid[0:L, 0:L]
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return d.argmin(axis=0)


def random_store(
    path: str | Path,
    n_images: int = 200,
    image_size: int = 224,
    n_objects: int = 600,
    n_parts: int = 250,
    n_materials: int = 30,
    n_scenes: int = 100,
    n_textures: int = 47,
    shard_size: int = 64,
    seed: int = 0,
) -> Path:
    """A store whose label maps look like Broden's (see the module docstring); with the
    defaults, 1,038 concepts in six categories."""
    rng = np.random.default_rng(seed)
    S, L = image_size, image_size // 2
    names: list[tuple[str, str]] = []
    ranges: dict[str, np.ndarray] = {}
    for cat, n, suffix in (
        ("color", 11, "-c"),
        ("object", n_objects, ""),
        ("part", n_parts, ""),
        ("material", n_materials, ""),
        ("scene", n_scenes, "-s"),
        ("texture", n_textures, ""),
    ):
        first = len(names) + 1
        names += [(f"{cat}{i}{suffix}", cat) for i in range(n)]
        ranges[cat] = np.arange(first, first + n)

    def zipf(cat: str, size: int | tuple[int, ...]) -> np.ndarray:
        ids = ranges[cat]
        p = 1.0 / np.arange(1, len(ids) + 1) ** 1.1
        return rng.choice(ids, size=size, p=p / p.sum())

    images = np.zeros((n_images, S, S, 3), np.uint8)
    obj = np.zeros((n_images, 1, L, L), np.uint16)
    part = np.zeros((n_images, 2, L, L), np.uint16)
    mat = np.zeros((n_images, 1, L, L), np.uint16)
    col = np.zeros((n_images, 1, L, L), np.uint16)
    scene = np.zeros((n_images, 1), np.uint16)
    texture = np.zeros((n_images, 2), np.uint16)
    for i in range(n_images):
        k = int(rng.integers(4, 14))
        cells = _voronoi(rng, L, k)
        cell_ids = zipf("object", k)
        cell_ids[rng.random(k) < 0.1] = 0  # some unlabeled regions
        obj[i, 0] = cell_ids[cells]
        for layer in range(2):
            pc = _voronoi(rng, L, int(rng.integers(6, 20)))
            pids = zipf("part", pc.max() + 1)
            inside = rng.random(k) < (0.35 if layer == 0 else 0.15)
            part[i, layer] = np.where(inside[cells], pids[pc], 0)
        mc = _voronoi(rng, L, int(rng.integers(2, 6)))
        mids = zipf("material", mc.max() + 1)
        mids[rng.random(len(mids)) < 0.5] = 0
        mat[i, 0] = mids[mc]
        base = rng.integers(0, 256, size=(k, 3))
        small = base[cells].astype(np.float64) + rng.normal(0, 12, size=(L, L, 3))
        img = np.clip(small, 0, 255).astype(np.uint8).repeat(2, 0).repeat(2, 1)
        images[i] = img[:S, :S]
        col[i, 0] = ranges["color"][(small.sum(axis=2) / 70).astype(np.int64).clip(0, 10)]
        scene[i, 0] = zipf("scene", 1)[0]
        if rng.random() < 0.3:
            texture[i] = [zipf("texture", 1)[0], zipf("texture", 1)[0] if rng.random() < 0.3 else 0]
    return write_store(
        path,
        images,
        {"color": col, "object": obj, "part": part, "material": mat},
        {"scene": scene, "texture": texture},
        names,
        shard_size=shard_size,
    )
