# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Benchmark of compositional explanations (``broden.dissect.explain``) on this machine,
against a straightforward implementation measured in the same run.

Synthetic data with Broden-like density: 1,228 concepts (11 colors, 720 objects, 320
parts, 30 materials, 100 scenes, 47 textures; Zipf-like frequencies, so most concepts
are rare), labels 112×112. Per image: objects as Voronoi regions (a few unlabelled),
parts as sub-regions of some objects, materials on a coarser partition, 2-4 colors in
8×8 blocks covering every pixel (a second color on some blocks), one scene and sometimes
a texture as whole-image labels. Units: sparse masks of blobs (discs of radius 6-14 px,
as 7×7 maps upsampled to 112 look), about 0.5 % of all pixels active, placed on the
regions of a preferred object or part or in the images of a preferred scene, plus some
random blobs.

(1) On a subset of images and a few units: :class:`~broden.dissect.explain.FormulaSearch`
(cold cache) against the straightforward search (every candidate formula's mask
evaluated over the whole subset with dense numpy masks, as the paper's code does; the
same candidates, order and beam rule), checking identical formulas and IoUs; the
speed-up (target ≥ 100×). Data preparation (dense masks, :class:`ConceptMasks`) is not
timed for either; the unit's conversion to atoms is.

(2) 512 units, length 3, beam 5, at ``--images`` and half as many: the concept masks'
build time and the search time, extrapolated to 22k and 63k images along the straight
line through the two measured sizes (and, more pessimistically, in proportion to the
larger one). Target: 512 units over 63k images in under 30 minutes.

Prints Markdown tables (writes nothing). Run: ``.venv/bin/python bench/explain.py``
(``--images``, ``--subset``, ``--subset-units``, ``--units``; ``--quick``: under a minute).
"""

from __future__ import annotations

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

import argparse
import time
from dataclasses import dataclass

import numpy as np

from bench.results_file import RESULTS, Run, md_table, write_section
from broden.dissect.explain import (
    ConceptMasks,
    FormulaSearch,
    UnitMask,
    equivalence_key,
    formula_key,
)
from broden.dissect.explain.masks import ImageConcepts

L = 112
P = L * L
GROUPS = {"color": 11, "object": 720, "part": 320, "material": 30, "scene": 100, "texture": 47}
FIRST = dict(zip(GROUPS, np.cumsum([0, *GROUPS.values()])[:-1].tolist(), strict=True))
C = sum(GROUPS.values())
NAMES = [f"{g}{k}" for g, n in GROUPS.items() for k in range(n)]
YY, XX = np.divmod(np.arange(P), L)


def zipf(rng: np.random.Generator, n: int, size: int | None = None, s: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=p / p.sum())


@dataclass
class Seeds:
    """Where a unit may put a blob: (image, concept, a pixel of that concept there)."""

    image: list[int]
    concept: list[int]
    pixel: list[int]


def voronoi(rng: np.random.Generator, k: int, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(region of each of ``pixels``, the seed pixels) of k random seeds among ``pixels``."""
    seeds = rng.choice(pixels, size=min(k, len(pixels)), replace=False)
    d = (YY[pixels, None] - YY[seeds]) ** 2 + (XX[pixels, None] - XX[seeds]) ** 2
    return d.argmin(axis=1), seeds


def image_concepts(seed: int, i: int, found: Seeds) -> ImageConcepts:
    """Image i's concept masks (flat pixel indices; None: whole image)."""
    rng = np.random.default_rng([seed, i])
    out: list[tuple[int, np.ndarray | None]] = []
    allpix = np.arange(P)
    region, seeds = voronoi(rng, int(rng.integers(3, 9)), allpix)
    for r, s in enumerate(seeds):
        if rng.random() < 0.2:
            continue  # unlabelled background
        obj = int(zipf(rng, GROUPS["object"]))
        pix = np.flatnonzero(region == r)
        out.append((FIRST["object"] + obj, pix))
        found.image.append(i), found.concept.append(FIRST["object"] + obj)
        found.pixel.append(int(s))
        if rng.random() < 0.4 and len(pix) > 50:
            sub, subseeds = voronoi(rng, int(rng.integers(2, 4)), pix)
            for j, ss in enumerate(subseeds):
                part = FIRST["part"] + (obj * 3 + j) % GROUPS["part"]
                out.append((part, pix[sub == j]))
                found.image.append(i), found.concept.append(part), found.pixel.append(int(ss))
    mat, _ = voronoi(rng, 2, allpix)
    for r in range(2):
        if rng.random() < 0.5:
            out.append((FIRST["material"] + int(zipf(rng, 30)), np.flatnonzero(mat == r)))
    palette = np.unique(zipf(rng, 11, size=int(rng.integers(2, 5)), s=0.7))
    blocks = rng.choice(palette, size=(14, 14))
    second = np.where(rng.random((14, 14)) < 0.3, rng.choice(palette, size=(14, 14)), -1)
    for grid in (blocks, second):
        cmap = np.repeat(np.repeat(grid, 8, axis=0), 8, axis=1).ravel()
        for c in np.unique(cmap[cmap >= 0]):
            out.append((FIRST["color"] + int(c), np.flatnonzero(cmap == c)))
    scene = FIRST["scene"] + int(zipf(rng, 100))
    out.append((scene, None))
    found.image.append(i), found.concept.append(scene), found.pixel.append(-1)
    if rng.random() < 0.3:
        out.append((FIRST["texture"] + int(zipf(rng, 47)), None))
    return out


def generate(seed: int, n: int) -> tuple[list[ImageConcepts], Seeds]:
    """Images 0..n-1's concept masks (pixel indices as uint16) and the blob seeds."""
    found = Seeds([], [], [])
    images = []
    for i in range(n):
        entries = image_concepts(seed, i, found)
        images.append([(c, None if p is None else p.astype(np.uint16)) for c, p in entries])
    return images, found


DISCS = {
    r: np.array(
        [(y, x) for y in range(-r, r + 1) for x in range(-r, r + 1) if y * y + x * x <= r * r]
    )
    for r in range(6, 15)
}


def make_units(seeds: Seeds, n: int, units: int, seed: int = 7) -> list[UnitMask]:
    """Blob units with about 0.5 % of the pixels of n images active."""
    rng = np.random.default_rng(seed)
    image, concept = np.array(seeds.image), np.array(seeds.concept)
    pixel = np.array(seeds.pixel)
    keep = image < n
    image, concept, pixel = image[keep], concept[keep], pixel[keep]
    mean_area = np.mean([len(d) for d in DISCS.values()]) * 0.85  # clipped at the edges
    blobs = max(1, int(2.4 * 0.005 * n * P / mean_area))  # 2.4: the discs overlap
    out = []
    for u in range(units):
        pick = np.flatnonzero(concept == concept[rng.integers(len(concept))])
        k = rng.choice(pick, size=int(blobs * 0.8))
        im = np.concatenate([image[k], rng.integers(0, n, blobs - len(k))])
        px = np.concatenate([pixel[k], rng.integers(0, P, blobs - len(k))])
        px = np.where(px < 0, rng.integers(0, P, len(px)), px)  # scenes: anywhere
        cy, cx = np.divmod(px, L)
        ims, pys, pxs = [], [], []
        for r, disc in DISCS.items():
            sel = rng.integers(6, 15, len(px)) == r
            ims.append(np.repeat(im[sel], len(disc)))
            pys.append((cy[sel, None] + disc[None, :, 0]).ravel())
            pxs.append((cx[sel, None] + disc[None, :, 1]).ravel())
        ii, yy, xx = np.concatenate(ims), np.concatenate(pys), np.concatenate(pxs)
        ok = (yy >= 0) & (yy < L) & (xx >= 0) & (xx < L)
        flat = np.unique(ii[ok] * P + yy[ok] * L + xx[ok])
        out.append(UnitMask(u, flat // P, flat % P))
    return out


def straightforward(dense: np.ndarray, unit: np.ndarray, length: int, beam: int) -> tuple:
    """The search with dense masks: every candidate's mask over the whole subset."""
    area = dense.reshape(len(dense), -1).sum(axis=1)
    m = unit.ravel()
    msize = int(m.sum())

    def iou(f: np.ndarray, fsize: int) -> float:
        inter = int(np.count_nonzero(f & m))
        union = msize + fsize - inter
        return inter / union if union else 0.0

    flat = dense.reshape(len(dense), -1)

    def distinct(pool: dict) -> list:
        out, seen = [], set()
        for key, v in sorted(pool.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0])):
            e = equivalence_key(key)
            if e not in seen:
                seen.add(e)
                out.append((key, v))
            if len(out) == beam:
                break
        return out

    current = distinct({(c,): iou(flat[c], int(area[c])) for c in range(len(flat))})
    for _ in range(length - 1):
        pool = dict(current)
        for key, _v in current:
            f = flat[key[0]].copy()
            for k in range(1, len(key), 2):
                g = flat[key[k + 1]]
                f = [f | g, f & g, f & ~g][key[k]]
            for c in range(len(flat)):
                if c in key[0::2]:
                    continue
                for op in range(3):
                    g = [f | flat[c], f & flat[c], f & ~flat[c]][op]
                    pool[(*key, op, c)] = iou(g, int(np.count_nonzero(g)))
        current = distinct(pool)
    return current[0]


def part1(seed: int, n_sub: int, n_units: int, repeat: int) -> str:
    images, seeds = generate(seed, n_sub)
    masks = ConceptMasks.from_images(images, NAMES, L)
    units = make_units(seeds, n_sub, n_units)
    dense = np.zeros((C, n_sub, P), bool)
    for i, entries in enumerate(images):
        for c, pix in entries:
            dense[c, i, slice(None) if pix is None else pix] = True
    t_fast = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fast = FormulaSearch(masks, 3, 5).explain_all(units)
        t_fast = min(t_fast, time.perf_counter() - t)
    t = time.perf_counter()
    slow = []
    for u in units:
        um = np.zeros((n_sub, P), bool)
        um[u.image, u.pixel] = True
        slow.append(straightforward(dense, um, 3, 5))
    t_slow = time.perf_counter() - t
    same = all((formula_key(f.ids), f.iou) == s for f, s in zip(fast, slow, strict=True))
    if not same:
        raise SystemExit("the two searches disagree")
    rows = [
        ["`FormulaSearch` (atoms, cached formula counts)", f"{t_fast:.3f} s",
         f"{1000 * t_fast / n_units:.1f} ms", "1×"],
        ["straightforward (dense masks, every candidate over the subset)", f"{t_slow:.1f} s",
         f"{1000 * t_slow / n_units:.0f} ms", f"{t_slow / t_fast:.0f}×"],
    ]  # fmt: skip
    best = "; ".join(f"{f.text} ({f.iou:.3f})" for f in fast[:3])
    return (
        f"(1) Length 3, beam 5, {C} concepts, {n_sub} images of {L}×{L}, {n_units} units; "
        f"identical formulas and IoUs: {same}. Best formulas of the first units: {best}.\n\n"
        + md_table(["search", "time", "per unit", "speed-up of `FormulaSearch`"], rows)
    )


def part2(seed: int, n: int, n_units: int) -> str:
    sizes = sorted({max(1, n // 2), n})
    rows, measured = [], {}
    for k in sizes:
        images, seeds = generate(seed, k)
        t = time.perf_counter()
        masks = ConceptMasks.from_images(images, NAMES, L)
        t_build = time.perf_counter() - t
        del images
        units = make_units(seeds, k, n_units)
        active = sum(len(u) for u in units) / (n_units * k * P)
        search = FormulaSearch(masks, 3, 5)
        t = time.perf_counter()
        search.explain_all(units)
        t_search = time.perf_counter() - t
        measured[k] = (t_build, t_search)
        rows.append([
            f"{k}", f"{masks.n_atoms:,}", f"{masks.nbytes / 2**20:.0f} MiB", f"{t_build:.1f} s",
            f"{t_search:.1f} s", f"{1000 * t_search / n_units:.1f} ms",
            f"{search.cache_misses:,} / {search.cache_hits:,}", f"{100 * active:.2f} %",
        ])  # fmt: skip

    def line(target: int, which: int) -> float:
        if len(sizes) == 1:
            return measured[sizes[0]][which] * target / sizes[0]
        (a, ta), (b, tb) = ((s, measured[s][which]) for s in sizes)
        return ta + (tb - ta) * (target - a) / (b - a)

    big = sizes[-1]
    for target in (22_000, 63_000):
        tb, ts = line(target, 0), line(target, 1)
        pb, ps = (measured[big][j] * target / big for j in (0, 1))
        rows.append([
            f"{target:,} (extrapolated)", "", "", f"{tb:.0f} s ({pb:.0f} s)",
            f"{ts / 60:.1f} min ({ps / 60:.1f} min)", f"{1000 * ts / n_units:.0f} ms", "", "",
        ])  # fmt: skip
    head = ["images", "atoms", "concept masks", "build", f"search, {n_units} units",
            "per unit", "formula counts computed / reused", "active pixels"]  # fmt: skip
    return (
        f"(2) Broden-like shapes: {C} concepts, labels {L}×{L}, {n_units} units, length 3, "
        "beam 5. Build: `ConceptMasks.from_images` from in-memory label masks. "
        "Extrapolated along the straight line through the two measured sizes; in brackets, "
        "in proportion to the larger one (target: 63k images in under 30 min).\n\n"
        + md_table(head, rows)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="images for part (2)")
    ap.add_argument("--subset", type=int, default=24, help="images for part (1)")
    ap.add_argument("--subset-units", type=int, default=4, help="units for part (1)")
    ap.add_argument("--units", type=int, default=512, help="units for part (2)")
    ap.add_argument("--repeat", type=int, default=3, help="part (1): best of this many")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results file to write")
    ap.add_argument("--work", type=Path, default=None, help="unused (the data are in memory)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.subset, args.subset_units, args.repeat = 200, 8, 2, 1
    run = Run()
    one = part1(args.seed, args.subset, args.subset_units, args.repeat)
    print(one + "\n", flush=True)
    two = part2(args.seed, args.images, args.units)
    print(two + "\n", flush=True)
    body = "\n\n".join(
        ["## Compositional explanations (`bench/explain.py`)", run.preamble(), one, two]
    )
    print("wrote", write_section("explain", body, args.results))


if __name__ == "__main__":
    main()
