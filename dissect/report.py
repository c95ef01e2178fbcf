"""The HTML report of a dissection run: what a researcher looks at.

:func:`write_report` reads every dissected layer in a results folder ``OUT/<layer>/``
(the files of :mod:`broden.dissect.results`) and writes one offline page, ``OUT/report.html``,
with its images beside it in ``OUT/report_files/``. Nothing on the page is fetched from
the network: the CSS and the small sorting script are inline, the charts and image
strips are local files. Per layer it shows

* the headline "k of n units are detectors of m unique concepts (IoU > t)" and the
  detectors and unique concepts per category;
* a bar chart of detectors per concept (one bar per distinct label of a detector unit,
  height = its number of units), grouped by category in the original NetDissect
  bar graph's order (object, scene, part, material, texture, color; other categories
  after them in store order), coloured by category;
* a unit table (unit order without JavaScript; sortable by unit, label, category and
  IoU with it) with each unit's top images: the ``top_k`` store images with the largest
  per-image maximum of the unit's activation (``topk.npz``, best first), dimmed to 20 %
  outside the unit's mask with its border outlined, and the same images with the
  pixels of the unit's concept instead (on hover, or for every row with a switch).

Masks: only the top images are run through the model again, never the whole store.
The model is loaded from the spec, weights and normalisation in ``summary.json``
(:func:`broden.dissect.models.load_model`; its fingerprint must match the recorded one), the
layer is captured with :class:`broden.dissect.hooks.LayerCapture`, each unit's map is upsampled
to the image size with the engine's bilinear rule (:func:`broden.dissect.tally.
upsample_reference`, ``align_corners=False``) and compared with the unit's threshold
(``thresholds.npy``) exactly as the tally compares (strictly above). For results of
precomputed activations, the rows of the recorded activation file are read instead, if
the file is still there and unchanged; otherwise, and for layers dissected through a
unit transform the report is not given, the images are shown without unit masks and
the page says why.

Display names drop Broden's ``-s`` (scene) and ``-c`` (color) suffixes, as the original
report did; the full name stays in the page (tooltips, ``data-`` attributes).

>>> write_report("results")                       # doctest: +SKIP
PosixPath('results/report.html')
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from broden.adapters.categories import category_colors
from broden.dissect.errors import DissectError
from broden.dissect.summary import (
    ActivationsRecord,
    CategoryDetectors,
    ConceptsRecord,
    LayerSummary,
    ModelRecord,
)

if TYPE_CHECKING:
    import torch

    from broden.store import BrodenStore

REPORT = "report.html"
FILES = "report_files"
#: the original bar graph's category order (NetDissect bargraph.py)
BAR_ORDER: tuple[str, ...] = ("object", "scene", "part", "material", "texture", "color")
#: brightness kept outside a mask (the original report's 20 %)
DIM = 0.2
UNIT_OUTLINE = (255, 221, 0)
CONCEPT_OUTLINE = (0, 229, 255)
_GAP = 3  # pixels between the tiles of a strip
_CHUNK_UNITS = 32  # units whose masks are upsampled together
_JPEG_QUALITY = 80
_SUFFIXES = {"scene": "-s", "color": "-c"}

UnitTransform = Callable[["torch.Tensor"], "torch.Tensor"]


# -- reading a results folder ---------------------------------------------------------------


@dataclass
class UnitRow:
    unit: int
    label: str
    category: str
    iou: float


@dataclass
class LayerResults:
    """The files of one dissected layer that the report reads."""

    name: str
    directory: Path
    summary: LayerSummary
    units: list[UnitRow]
    concepts: dict[tuple[str, str], int]  # (name, category) -> concept id
    thresholds: np.ndarray
    top_indices: np.ndarray  # units × K store indices, best first
    top_values: np.ndarray

    @property
    def iou_threshold(self) -> float:
        return self.summary.settings.iou_threshold

    @property
    def detectors(self) -> int:
        return self.summary.detectors

    @property
    def unique(self) -> dict[str, int]:
        u = self.summary.unique_detectors
        return {"top_label": u.top_label, "per_category": u.per_category}


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_layers(out: Path) -> list[Path]:
    """The layer folders of a results folder (``OUT/<layer>/summary.json``), in natural
    name order (layer2 before layer10)."""
    if not out.is_dir():
        raise DissectError(f"results folder {out}: no such folder")
    dirs = [p for p in out.iterdir() if p.is_dir() and (p / "summary.json").is_file()]
    if not dirs:
        raise DissectError(
            f"{out} is not a dissection results folder: it has no <layer>/summary.json "
            "(run `broden dissect STORE --out OUT ...` first, and give its OUT)"
        )
    return sorted(dirs, key=lambda p: _natural_key(p.name))


def read_layer(directory: Path) -> LayerResults:
    """One layer's results; :class:`DissectError` naming the file that is missing or
    unreadable."""
    summary = LayerSummary.read(directory)
    current = directory / "units.csv"
    try:
        with open(current, newline="") as f:
            units = [
                UnitRow(int(r["unit"]), r["label"], r["category"], float(r["iou"]))
                for r in csv.DictReader(f)
            ]
        current = directory / "concepts.csv"
        with open(current, newline="") as f:
            concepts = {(r["name"], r["category"]): int(r["id"]) for r in csv.DictReader(f)}
        current = directory / "thresholds.npy"
        thresholds = np.load(current, allow_pickle=False)
        current = directory / "topk.npz"
        with np.load(current, allow_pickle=False) as z:
            top_indices, top_values = z["indices"], z["values"]
    except FileNotFoundError:
        raise DissectError(
            f"{directory} is not a complete dissected layer: {current.name} is missing"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DissectError(
            f"{directory}: cannot read {current.name} ({type(e).__name__}: {e}); "
            "re-run `broden dissect` for this layer"
        ) from None
    n = len(thresholds)
    if len(units) != n or top_indices.shape[0] != n:
        raise DissectError(
            f"{directory}: units.csv has {len(units)} units, thresholds.npy {n} and topk.npz "
            f"{top_indices.shape[0]}; the folder mixes files of different runs"
        )
    return LayerResults(
        summary.layer,
        directory,
        summary,
        units,
        concepts,
        thresholds,
        top_indices,
        top_values,
    )


def display_name(name: str, category: str) -> str:
    """``street-s`` → ``street`` for a scene, ``red-c`` → ``red`` for a color (display
    only: the original report's convention); other names unchanged."""
    suffix = _SUFFIXES.get(category)
    if suffix and name.endswith(suffix) and len(name) > len(suffix):
        return name[: -len(suffix)]
    return name


def has_random_weights(spec: str | None, weights: str | None) -> bool:
    """True when a model spec is known to give random weights: the built-in zoo
    (``dissect.zoo:*``) or ``torchvision:NAME`` without ``--weights`` (a
    ``module:factory`` may load its own)."""
    if not spec or weights:
        return False
    if spec.startswith(("dissect.zoo:", "broden.dissect.zoo:")):
        return True
    parts = spec.split(":")
    return parts[0] == "torchvision" and len(parts) == 2


# -- the bar chart --------------------------------------------------------------------------


def detector_counts(layer: LayerResults, order: Sequence[str]) -> list[tuple[str, str, int]]:
    """(label, category, detector units) per distinct label of a detector unit: categories
    in ``order`` (others after, in first-seen order), within a category by descending count
    then name."""
    t = layer.iou_threshold
    counts: dict[tuple[str, str], int] = {}
    for r in layer.units:
        if r.label and r.iou > t:
            counts[(r.label, r.category)] = counts.get((r.label, r.category), 0) + 1
    cats = list(order) + [c for _, c in counts if c not in order]
    return sorted(
        ((lab, cat, n) for (lab, cat), n in counts.items()),
        key=lambda x: (cats.index(x[1]), -x[2], x[0]),
    )


def bar_chart(
    layer: LayerResults, path: Path, colors: Mapping[str, str], order: Sequence[str] = BAR_ORDER
) -> bool:
    """Write the detectors-per-concept bar chart of ``layer`` as SVG (text drawn as
    paths, so no concept name is markup in it); False when the layer has no detector."""
    bars = detector_counts(layer, order)
    if not bars:
        return False
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    n = len(bars)
    longest = max(len(display_name(b[0], b[1])) for b in bars)
    fig = Figure(figsize=(max(4.0, 1.2 + 0.24 * n), 2.6 + 0.07 * min(longest, 30)))
    ax = fig.subplots()
    x = np.arange(n)
    ax.bar(x, [b[2] for b in bars], color=[colors[b[1]] for b in bars], width=0.75)
    ax.set_xticks(x, [display_name(b[0], b[1]) for b in bars], rotation=90, fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("detector units")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{layer.name}: detectors per concept", fontsize=10)
    seen = list(dict.fromkeys(b[1] for b in bars))
    ax.legend(
        handles=[Patch(color=colors[c], label=c) for c in seen],
        fontsize=8,
        frameon=False,
        loc="upper right",
    )
    fig.tight_layout()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "broden-report"}):
        fig.savefig(path, format="svg", metadata={"Date": None})
    return True


# -- masks and tiles ------------------------------------------------------------------------


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


def strip(tiles: np.ndarray) -> Any:
    """Tiles (k, T, T, 3) side by side, :data:`_GAP` white pixels apart, as a PIL image."""
    from PIL import Image

    k, T = tiles.shape[:2]
    canvas = np.full((T, k * T + (k - 1) * _GAP, 3), 255, np.uint8)
    for j in range(k):
        canvas[:, j * (T + _GAP) : j * (T + _GAP) + T] = tiles[j]
    return Image.fromarray(canvas)


class _Images:
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


# -- activations of the top images ----------------------------------------------------------


@dataclass
class _Job:
    """One layer in the report: its results, the images shown, and how masks are made."""

    layer: LayerResults
    store: BrodenStore
    k: int
    notes: list[str] = field(default_factory=list)
    maps: torch.Tensor | None = None  # (units, k, h, w) maps of the shown images

    @property
    def shown(self) -> np.ndarray:
        return self.layer.top_indices[:, : self.k]


def _rerun_key(job: _Job) -> str:
    s = job.layer.summary
    return json.dumps(
        {"model": s.model.model_dump(mode="json"), "store": str(job.store.path),
         "amp": s.settings.amp},
        sort_keys=True,
    )  # fmt: skip


def _gather(
    job: _Job, images: np.ndarray, maps: torch.Tensor, where: dict[int, tuple[Any, Any]]
) -> None:
    """Copy the maps of the (unit, rank) pairs that show these images into ``job.maps``."""
    import torch

    assert job.maps is not None
    for b, i in enumerate(images.tolist()):
        if i not in where:  # shown for another layer only
            continue
        units, ranks = where[i]
        if len(units):
            job.maps[torch.as_tensor(units), torch.as_tensor(ranks)] = (
                maps[b, torch.as_tensor(units, device=maps.device)].to(job.maps.dtype).cpu()
            )


def _pairs(job: _Job) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Store image → (units, ranks) where it is shown."""
    shown = job.shown
    order = np.argsort(shown, axis=None, kind="stable")
    flat = shown.ravel()[order]
    units, ranks = np.unravel_index(order, shown.shape)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    bounds = np.flatnonzero(np.diff(flat)) + 1
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(flat)], strict=True):
        if b > a:
            out[int(flat[a])] = (units[a:b], ranks[a:b])
    return out


def _alloc(job: _Job, maps: torch.Tensor) -> None:
    import torch

    U, k = job.shown.shape
    job.maps = torch.zeros((U, k, maps.shape[2], maps.shape[3]), dtype=maps.dtype)


def _apply_transform(fn: UnitTransform | None, maps: torch.Tensor, layer: str) -> torch.Tensor:
    if fn is None:
        return maps
    out = fn(maps)
    if getattr(out, "ndim", None) != 4 or out.shape[0] != maps.shape[0]:
        raise DissectError(f"the unit transform of layer {layer!r} must return (B, U, h, w)")
    return out if out.is_floating_point() else out.float()


def _model_maps(
    jobs: list[_Job],
    transforms: Mapping[str, UnitTransform],
    device: str,
    batch_size: int,
) -> None:
    """Run the shown images of ``jobs`` (one model, one store) through the model and keep
    each shown (unit, image) map."""
    import torch

    from broden.dissect.data import resolve_device
    from broden.dissect.hooks import LayerCapture, to_unit_maps
    from broden.dissect.models import Normalization, autocast, load_model, preprocess

    first = jobs[0]
    src = first.layer.summary.model
    assert isinstance(src, ModelRecord)
    spec, weights = src.spec, src.weights
    hint = "; pass --no-masks (masks=False) to write the report without unit masks"
    if spec.startswith("module:"):
        for j in jobs:
            j.notes.append(
                f"unit masks not drawn: the model ({spec}) was given as a Python object, "
                "which the report cannot load again"
            )
        return
    if weights and not Path(weights).is_file():
        raise DissectError(
            f"layer {first.layer.name}: the weights {weights} recorded in summary.json are "
            f"gone, so the unit masks cannot be drawn{hint}"
        )
    try:
        loaded = load_model(spec, weights)
    except DissectError as e:
        raise DissectError(
            f"layer {first.layer.name}: the dissected model no longer loads ({e}){hint}"
        ) from None
    if loaded.fingerprint != src.fingerprint:
        raise DissectError(
            f"layer {first.layer.name}: the model {spec}"
            f"{f' with weights {weights}' if weights else ''} loads but is not the one "
            f"dissected (fingerprint {loaded.fingerprint}, recorded {src.fingerprint}): "
            f"its code or weights changed since{hint}"
        )
    mean, std = src.normalize
    norm = Normalization(first.layer.summary.settings.normalize or "recorded", mean, std)
    size = src.input_size
    layout, prefix = src.layout, src.prefix_tokens
    amp = first.layer.summary.settings.amp
    dev = resolve_device(device)
    module = loaded.module.to(dev)
    names = list(dict.fromkeys(j.layer.name for j in jobs))
    pairs = [_pairs(j) for j in jobs]
    wanted = np.array(sorted(set().union(*(p.keys() for p in pairs))), np.int64)
    fixed = loaded.batch_size
    bs = min(batch_size, fixed) if fixed else batch_size
    store = first.store
    with torch.inference_mode(), LayerCapture(module, names) as cap:
        for a in range(0, len(wanted), bs):
            idx = wanted[a : a + bs]
            x = torch.from_numpy(np.stack([store.image(int(i)) for i in idx])).to(dev)
            x = preprocess(x, norm, size)
            n = x.shape[0]
            if fixed and n != fixed:
                x = torch.cat([x, x[-1:].expand(fixed - n, *x.shape[1:])])
            try:
                with autocast(dev, amp):  # as the dissection ran it (--amp)
                    outs = cap.run(x)
            except DissectError:
                raise
            except Exception as e:
                raise DissectError(
                    f"the model failed on the top images ({type(e).__name__}: {e})"
                ) from None
            for j, p in zip(jobs, pairs, strict=True):
                name = j.layer.name
                m = to_unit_maps(outs[name], name, layout, prefix)[:n]
                m = _apply_transform(transforms.get(name), m, name)
                if j.maps is None:
                    _alloc(j, m)
                _gather(j, idx, m, p)


def _activation_maps(job: _Job, transforms: Mapping[str, UnitTransform]) -> None:
    """Maps of the shown images from the activation file recorded in summary.json, if it
    is still there and unchanged."""
    import torch

    from broden.dissect.hooks import to_unit_maps
    from broden.dissect.pipeline import activation_fingerprint, open_activations

    src = job.layer.summary.model
    assert isinstance(src, ActivationsRecord)
    path = src.activations
    if path == "array":
        job.notes.append(
            "unit masks not drawn: the activations were given as an array in memory, "
            "not a file the report can read"
        )
        return
    if not Path(path).exists():
        job.notes.append(f"unit masks not drawn: the activation file {path} is no longer there")
        return
    acts, p = open_activations(path)
    if activation_fingerprint(acts, p) != src.fingerprint:
        job.notes.append(
            f"unit masks not drawn: the activation file {path} changed since the dissection"
        )
        return
    pairs = _pairs(job)
    name = job.layer.name
    for i in sorted(pairs):
        row = torch.from_numpy(np.array(acts[i : i + 1]))
        m = to_unit_maps(row, name, src.layout, src.prefix_tokens)
        m = _apply_transform(transforms.get(name), m, name)
        if job.maps is None:
            _alloc(job, m)
        _gather(job, np.array([i]), m, pairs)


def _check_maxima(job: _Job) -> None:
    """The recomputed maps' maxima must be the recorded top values (else: a note)."""
    if job.maps is None:
        return
    got = job.maps.flatten(2).amax(dim=2).double().numpy()
    want = job.layer.top_values[:, : job.k]
    scale = np.maximum(np.abs(want), np.abs(want).max(initial=0.0) * 1e-3)
    err = float(np.max(np.abs(got - want) / np.maximum(scale, 1e-12), initial=0.0))
    if err > 1e-2:  # rounding (TF32 convolutions on a GPU) stays far below; another model not
        job.notes.append(
            f"the recomputed activations of the top images differ from the recorded ones (by "
            f"up to {err:.1e} relative): the masks may not be those of the dissection"
        )


# -- the page -------------------------------------------------------------------------------


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)


def _url(*parts: str) -> str:
    """A relative URL from path parts (each percent-encoded)."""
    return "/".join(quote(p) for p in parts)


def _open_store(path: str | os.PathLike[str], layer: LayerResults, given: bool) -> BrodenStore:
    from broden.store import StoreError, open_store

    if not Path(path).exists():
        how = "given" if given else f"recorded in {layer.directory / 'summary.json'}"
        raise DissectError(
            f"layer {layer.name}: the store {path} ({how}) does not exist; pass the store "
            "that was dissected with --store"
        )
    try:
        return open_store(Path(path))
    except StoreError as e:
        raise DissectError(f"layer {layer.name}: {e}") from None


def _check_store(store: BrodenStore, layer: LayerResults) -> None:
    rec = layer.summary.store
    fp = store.fingerprint()
    if rec.fingerprint != fp:
        raise DissectError(
            f"layer {layer.name}: the store {store.path} is not the one dissected "
            f"(fingerprint {fp}, recorded {rec.fingerprint} for {rec.path}); "
            "its top-image numbers would point at other images. Pass the dissected store "
            "with --store"
        )


def _layer_context(
    job: _Job,
    files: Path,
    idx: int,
    tile_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Render one layer's chart and strips; return what the template needs."""
    from tqdm import tqdm

    layer = job.layer
    directory = files / layer.directory.name

    def url(path: Path) -> str:  # as seen from report.html, once files/ is report_files/
        return _url(FILES, layer.directory.name, path.name)

    directory.mkdir(parents=True, exist_ok=True)
    s = layer.summary
    store_cats = [c.name for c in job.store.categories]
    cats = list(s.concepts.categories or store_cats)
    colors = category_colors(list(dict.fromkeys(BAR_ORDER + tuple(cats))))
    chart = directory / "detectors.svg"
    has_chart = bar_chart(layer, chart, colors, BAR_ORDER + tuple(cats))

    S = job.store.image_size
    tile = min(tile_size, S)
    width = max(1, round(tile / 112))  # outline width in tile pixels
    images = _Images(job.store, tile)
    digits = max(4, len(str(len(layer.units) - 1)))
    t = layer.iou_threshold
    sources, source_ids = job.store.meta("source"), job.store.meta("source_id")

    def render(chunk: list[UnitRow], tiles: list[np.ndarray], concepts: list[Any]) -> None:
        """Draw and save the strips of a chunk of units."""
        cover = None
        if job.maps is not None:
            units = [r.unit for r in chunk]
            masks = unit_masks(job.maps[units], layer.thresholds[units], S)
            cover = coverage(masks.cpu().numpy(), tile)
        for j, r in enumerate(chunk):
            base = directory / f"unit-{r.unit:0{digits}d}"
            ucover = None if cover is None else cover[j]
            drawn = draw_masks(tiles[j], ucover, UNIT_OUTLINE, None, width)
            strip(drawn).save(f"{base}.jpg", quality=_JPEG_QUALITY)
            if concepts[j] is not None:
                masks, frame = concepts[j]
                ccover = coverage(masks, tile)
                drawn = draw_masks(tiles[j], ccover, CONCEPT_OUTLINE, frame, width)
                strip(drawn).save(f"{base}-concept.jpg", quality=_JPEG_QUALITY)

    rows = []
    bar = tqdm(
        total=len(layer.units), desc=f"report {layer.name}", disable=not progress, leave=False
    )
    for a in range(0, len(layer.units), _CHUNK_UNITS):
        chunk = layer.units[a : a + _CHUNK_UNITS]
        tiles: list[np.ndarray] = []
        concepts: list[tuple[np.ndarray, np.ndarray] | None] = []
        for r in chunk:
            shown = [int(i) for i in job.shown[r.unit]]
            tiles.append(np.stack([images.tile(i) for i in shown]))
            cid = layer.concepts.get((r.label, r.category)) if r.label else None
            if cid is None:
                concepts.append(None)
            else:
                cm = [concept_mask(*images.labels(i), cid, S) for i in shown]
                concepts.append((np.stack([m for m, _ in cm]), np.array([w for _, w in cm])))
            base = f"unit-{r.unit:0{digits}d}"
            rows.append(
                {
                    "unit": r.unit,
                    "label": r.label,
                    "display": display_name(r.label, r.category) if r.label else "",
                    "category": r.category,
                    "color": colors.get(r.category, "#777777"),
                    "iou": r.iou,
                    "detector": bool(r.label) and r.iou > t,
                    "images": shown,
                    "sources": [f"{i}: {sources[i]} {source_ids[i]}" for i in shown],
                    "strip": url(Path(f"{base}.jpg")),
                    "concept_strip": url(Path(f"{base}-concept.jpg")) if cid else None,
                    "width": len(shown) * tile + (len(shown) - 1) * _GAP,
                    "height": tile,
                }
            )
        render(chunk, tiles, concepts)
        bar.update(len(chunk))
    bar.close()
    none = CategoryDetectors(
        detectors=0, unique_top_label=0, units_over_threshold=0, unique_per_category=0
    )
    categories = [
        {
            "name": c,
            "color": colors.get(c, "#777777"),
            "detectors": s.per_category.get(c, none).detectors,
            "unique": s.per_category.get(c, none).unique_top_label,
            "unique_per_category": s.per_category.get(c, none).unique_per_category,
        }
        for c in sorted(cats, key=lambda c: BAR_ORDER.index(c) if c in BAR_ORDER else 99)
    ]
    model, settings = s.model, s.settings
    is_model = isinstance(model, ModelRecord)
    weights = model.weights if isinstance(model, ModelRecord) else None
    return {
        "id": f"layer-{idx}",
        "name": layer.name,
        "directory": layer.directory.name,
        "units": len(layer.units),
        "detectors": layer.detectors,
        "unique": layer.unique.get("top_label", 0),
        "unique_per_category": layer.unique.get("per_category", 0),
        "iou_threshold": f"{t:g}",
        "categories": categories,
        "chart": url(chart) if has_chart else None,
        "rows": rows,
        "k": job.k,
        "masks": job.maps is not None,
        "notes": job.notes,
        "source": model.spec if isinstance(model, ModelRecord) else model.activations,
        "source_kind": "model" if is_model else "activations",
        "weights": weights,
        "random_weights": is_model and has_random_weights(s.source, weights),
        "store": s.store.path,
        "images": s.store.images,
        "shape": "×".join(str(v) for v in s.activation_shape),
        "settings": {
            "quantile": settings.quantile,
            "thresholds": settings.thresholds,
            "quantile method": settings.quantile_method,
            "unit area": settings.unit_area,
            "IoU threshold": f"{t:g}",
            "normalize": settings.normalize,
            "input size": settings.input_size,
            "transform": settings.transform,
            "sources": ", ".join(settings.sources or []) or "all",
            "concepts": _concept_set(s.concepts),
            "amp": "on" if settings.amp else "off",
        },
    }


def _concept_set(c: ConceptsRecord) -> str:
    """The concept selection of a run, as the report's settings table shows it."""
    fp = f" (set {c.fingerprint})" if c.fingerprint else ""
    return f"{c.selection}: {c.count} concepts{fp}"


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | BrodenStore | None = None,
    top_k: int = 10,
    masks: bool = True,
    transforms: Mapping[str, UnitTransform] | None = None,
    device: str = "auto",
    batch_size: int = 32,
    tile_size: int = 112,
    progress: bool = False,
) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/report_files/``) for every layer in the
    results folder ``out_dir``; return the page's path.

    ``store``: the dissected store (default: the path recorded in each layer's
    summary.json; its fingerprint must match). ``top_k``: top images per unit (at most
    the number recorded in topk.npz). ``masks=False``: show the top images without unit
    masks (and without running the model). ``transforms``: layer → the unit transform
    the layer was dissected through (e.g. a rotation), re-applied to the recomputed
    activations; a transformed layer without one is shown without unit masks.
    ``tile_size``: pixels per image in the strips (at most the store's image size).
    """
    import torch

    from broden.store import BrodenStore

    out = Path(out_dir)
    if top_k < 1:
        raise DissectError(f"--top-k must be at least 1, got {top_k}")
    if tile_size < 8:
        raise DissectError(f"--tile-size must be at least 8 pixels, got {tile_size}")
    layers = [read_layer(d) for d in find_layers(out)]
    transforms = dict(transforms or {})
    stores: dict[str, BrodenStore] = {}
    jobs: list[_Job] = []
    for la in layers:
        if isinstance(store, BrodenStore):
            st = store
        else:
            path = str(store if store is not None else la.summary.store.path)
            if path not in stores:
                stores[path] = _open_store(path, la, store is not None)
            st = stores[path]
        _check_store(st, la)
        recorded = la.top_indices.shape[1]
        job = _Job(la, st, min(top_k, recorded))
        if top_k > recorded:
            job.notes.append(
                f"{recorded} top images per unit were recorded; showing {recorded}, not {top_k}"
            )
        jobs.append(job)

    # unit maps of the shown images: one re-run per (model, store), or the activation file
    groups: dict[str, list[_Job]] = {}
    for j in jobs:
        transform = j.layer.summary.settings.transform
        if not masks:
            j.notes.append("unit masks not drawn (masks turned off)")
        elif transform and j.layer.name not in transforms:
            j.notes.append(
                f"unit masks not drawn: the layer was dissected through the unit transform "
                f"{transform!r}, which the report was not given"
            )
        elif isinstance(j.layer.summary.model, ActivationsRecord):
            _activation_maps(j, transforms)
        else:
            groups.setdefault(_rerun_key(j), []).append(j)
    for group in groups.values():
        _model_maps(group, transforms, device, batch_size)
    for j in jobs:
        _check_maxima(j)

    files = out / FILES
    staging = out / (FILES + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with torch.inference_mode():
            contexts = [
                _layer_context(j, staging, n, tile_size, progress) for n, j in enumerate(jobs)
            ]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    page = _render(
        {
            "title": f"Network dissection: {out.resolve().name}",
            "out": str(out),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "layers": contexts,
            "random_weights": any(c["random_weights"] for c in contexts),
            "outline_unit": _hex(UNIT_OUTLINE),
            "outline_concept": _hex(CONCEPT_OUTLINE),
            "dim": f"{DIM:.0%}",
        }
    )
    shutil.rmtree(files, ignore_errors=True)
    staging.rename(files)
    target = out / REPORT
    tmp = out / (REPORT + ".partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target


def _render(context: dict[str, Any]) -> str:
    """The page from the templates: autoescaped; the CSS and the script are our own files,
    inlined verbatim, and the Content-Security-Policy allows that one script (by its hash),
    local images and nothing else."""
    import base64
    import hashlib

    from jinja2 import Environment, FileSystemLoader, StrictUndefined
    from markupsafe import Markup

    templates = Path(__file__).parent / "templates"
    env = Environment(
        loader=FileSystemLoader(templates),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["iou"] = lambda v: f"{v:.3f}"
    script = "\n" + (templates / "report.js").read_text(encoding="utf-8") + "\n"
    css = (templates / "report.css").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return env.get_template("report.html.j2").render(
        **context,
        css=Markup(css),  # noqa: S704 - our own stylesheet, not data
        script=Markup(script),  # noqa: S704 - our own script, not data
        script_hash=f"sha256-{digest}",
    )
