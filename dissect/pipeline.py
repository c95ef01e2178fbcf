"""The dissection driver: passes over the store, per-layer state, the results cache.

For each layer that is not already in the results cache:

1. **Thresholds**: a pass feeds every batch's activations to a per-unit
   :class:`~broden.dissect.thresholds.StreamingTopK` and records each unit's top images; the
   thresholds follow from the kept values. Given thresholds skip this.
2. **Tally**: a pass upsamples, thresholds and counts (:class:`~broden.dissect.tally.Tally`).
3. **Scoring** and files (:mod:`broden.dissect.results`).

With a model, the two passes are either one forward pass whose (transformed) activations
are kept in memory and replayed for the tally, when they fit ``memory_budget``
(``cache_activations="auto"``, or ``"yes"`` regardless), or two forward passes
(``"no"``, or when they do not fit): memory stays bounded whatever the number of
images; nothing is written to disk but the results. With thresholds given, one pass
does both. Several layers share each forward pass.

A dissection may cover only the images of some sources (``sources``). With
``distributed`` (under ``torchrun``) each rank passes over its own shards of them and
the ranks merge their thresholds' top-k, top images and counts after each pass
(:mod:`broden.dissect.distributed`); rank 0 writes the files. ``amp`` runs the model's forward
pass under autocast (float16 on CUDA, bfloat16 on the CPU); the maps are float32.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from broden.dissect.concepts import ConceptSelection, select_concepts
from broden.dissect.data import (
    StoreBatch,
    StoreBatches,
    iterate,
    resolve_device,
    resolve_sources,
    source_indices,
)
from broden.dissect.distributed import LOCAL, Ranks
from broden.dissect.errors import DissectError
from broden.dissect.hooks import LAYOUTS, LayerCapture, to_unit_maps
from broden.dissect.models import (
    LoadedModel,
    Normalization,
    autocast,
    load_model,
    parse_normalize,
    preprocess,
)
from broden.dissect.results import (
    DissectionResult,
    LayerCounts,
    cache_key,
    layer_dir,
    read_cached,
    write_layer,
)
from broden.dissect.scoring import MODES
from broden.dissect.summary import LayerSummary
from broden.dissect.tally import LabelTables, Tally, threshold_for_dtype
from broden.dissect.thresholds import (
    StreamingTopK,
    check_thresholds,
    load_thresholds,
    threshold_from_top,
    validate_quantile,
    values_needed,
)
from broden.dissect.topimages import TopImages
from broden.store import BrodenStore, open_store

UnitTransform = Callable[[torch.Tensor], torch.Tensor]
ThresholdSpec = str | os.PathLike[str] | np.ndarray | Mapping[str, Any] | None
Batches = Iterator[tuple[StoreBatch, dict[str, torch.Tensor]]]

CACHE_CHOICES = ("auto", "yes", "no")
MIN_TOP_IMAGES = 50


def parse_size(value: str | int | float) -> int:
    """Bytes from ``2GiB``, ``512MB``, ``1.5G``, ``1e9`` or a number (k/M/G/T: powers of 1000,
    Ki/Mi/Gi/Ti: powers of 1024)."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", value)
    try:
        assert m is not None
        number = float(m.group(1))
    except (AssertionError, ValueError):
        raise DissectError(
            f"--memory-budget {value!r}: expected a size such as 2GiB or 500MB"
        ) from None
    power = "kmgt".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(number * (1024 if m.group(3) else 1000) ** power)


def _open(store: BrodenStore | str | os.PathLike[str]) -> BrodenStore:
    return store if isinstance(store, BrodenStore) else open_store(Path(store))


@contextmanager
def _device_errors(device: torch.device, batch_size: int) -> Iterator[None]:
    """Out-of-memory anywhere in a pass becomes one message with a suggestion."""
    try:
        yield
    except torch.OutOfMemoryError:
        smaller = max(1, batch_size // 2)
        raise DissectError(
            f"out of memory on {device} at --batch-size {batch_size}; try --batch-size {smaller}"
            " (or fewer layers per run)"
        ) from None
    except MemoryError:
        raise DissectError(
            f"out of host memory at --batch-size {batch_size}; try a smaller --batch-size or "
            "--cache-activations no"
        ) from None


class _Layer:
    """One layer's state through the passes."""

    def __init__(
        self,
        name: str,
        directory: Path,
        key: str,
        thresholds: np.ndarray | None,
    ):
        self.name, self.directory, self.key = name, directory, key
        self.given = thresholds
        self.thresholds: np.ndarray | None = thresholds
        self.units = 0
        self.shape = (0, 0)
        self.dtype = torch.float32
        self.quant: StreamingTopK | None = None
        self.top: TopImages | None = None
        self.tally: Tally | None = None
        self.thr_dev: torch.Tensor | None = None
        self.cache: torch.Tensor | None = None

    def setup(
        self,
        maps: torch.Tensor,
        n_images: int,
        quantile: float,
        method: str,
        k_top: int,
        tables: LabelTables,
        label_size: int,
    ) -> None:
        _, U, h, w = maps.shape
        self.units, self.shape, self.dtype = U, (h, w), maps.dtype
        if self.given is not None:
            self.thresholds = check_thresholds(self.given, U, f"thresholds of layer {self.name}")
        else:
            k = values_needed(n_images * h * w, quantile, method)
            self.quant = StreamingTopK(U, k, maps.device, maps.dtype)
        self.top = TopImages(U, min(k_top, n_images))
        self.tally = Tally(U, tables, label_size)

    def check(self, maps: torch.Tensor, batch: StoreBatch) -> None:
        if maps.ndim != 4 or maps.shape[0] != len(batch) or maps.shape[1] != self.units:
            raise DissectError(
                f"layer {self.name!r}: maps of shape {tuple(maps.shape)} for "
                f"{batch.describe()}, expected ({len(batch)}, {self.units}, h, w)"
            )
        if not bool(torch.isfinite(maps).all()):
            bad = (~torch.isfinite(maps)).flatten(2).any(2).any(0).nonzero().flatten().tolist()
            imgs = (~torch.isfinite(maps)).flatten(1).any(1).nonzero().flatten()
            first = int(batch.indices()[int(imgs[0]) if len(imgs) else 0])
            more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DissectError(
                f"layer {self.name!r}: activations are not finite (NaN or inf) in units "
                f"{bad[:20]}{more} of {batch.describe()} (first in image "
                f"{first}); the model or the activation file is broken there"
            )

    def observe(self, maps: torch.Tensor, batch: StoreBatch) -> None:
        """Pass 1: thresholds' top-k, top images, finiteness, optional in-memory copy."""
        self.check(maps, batch)
        assert self.top is not None
        self.top.add(maps.amax(dim=(2, 3)), batch.indices())
        if self.quant is not None:
            self.quant.add(maps.transpose(0, 1).reshape(self.units, -1))
        if self.cache is not None:
            self.cache[batch.start : batch.stop].copy_(maps, non_blocking=True)

    def finish_thresholds(self, quantile: float, method: str, ranks: Ranks) -> None:
        """Thresholds from every rank's top values (collective when distributed)."""
        if self.quant is not None:
            top, seen = ranks.merge_top_values(self.quant.result(), self.quant.seen)
            self.thresholds = threshold_from_top(top, seen, quantile, method)
            self.quant = None
        assert self.thresholds is not None

    def merge(self, ranks: Ranks) -> None:
        """Counts and top images of every rank (collective when distributed)."""
        assert self.tally is not None and self.top is not None
        t = self.tally
        images = torch.tensor([t.images], dtype=torch.int64, device=t.label_counts.device)
        ranks.sum_([t.intersection, *t.area.values(), t.label_counts, images])
        t.images = int(images)
        self.top.values, self.top.indices = ranks.merge_top_images(
            self.top.values, self.top.indices, self.top.k
        )

    def add(self, maps: torch.Tensor, labels: Any) -> None:
        assert self.tally is not None and self.thresholds is not None
        if self.thr_dev is None or self.thr_dev.dtype != maps.dtype:
            self.thr_dev = threshold_for_dtype(self.thresholds, maps.dtype).to(maps.device)
        self.tally.add(maps, self.thr_dev, labels)

    def counts(self, selection: ConceptSelection) -> LayerCounts:
        assert self.tally is not None and self.top is not None and self.thresholds is not None
        return LayerCounts(
            self.tally.counts(selection),
            self.thresholds,
            self.top.indices,
            self.top.values,
            self.shape,
        )


def _bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)


def _resolve_thresholds(spec: ThresholdSpec, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Given thresholds per layer: an array or .npy (one layer), a mapping layer → array or
    file, or a directory holding ``<layer>/thresholds.npy`` or ``<layer>.npy``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        out = {}
        for la, v in spec.items():
            out[la] = (
                load_thresholds(str(v)) if isinstance(v, (str, os.PathLike)) else np.asarray(v)
            )
        unknown = set(out) - set(layers)
        if unknown:
            raise DissectError(
                f"thresholds given for layers {sorted(unknown)} that are not dissected"
            )
        return out
    if isinstance(spec, np.ndarray):
        if len(layers) != 1:
            raise DissectError("one thresholds array given for several layers; pass a mapping")
        return {layers[0]: spec}
    path = Path(spec)
    if path.is_dir():
        out = {}
        for la in layers:
            cands = [layer_dir(path, la) / "thresholds.npy", path / f"{la}.npy"]
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                raise DissectError(
                    f"--thresholds {path}: no {cands[0].relative_to(path)} or {cands[1].name} "
                    f"for layer {la!r}"
                )
            out[la] = load_thresholds(str(found))
        return out
    if not path.is_file():
        raise DissectError(f"--thresholds {path}: no such file or directory")
    if len(layers) != 1:
        raise DissectError(
            f"--thresholds {path}: one file for {len(layers)} layers; give a directory with "
            "<layer>.npy files (or a previous run's output directory) instead"
        )
    return {layers[0]: load_thresholds(str(path))}


def _transforms(
    unit_transform: UnitTransform | Mapping[str, UnitTransform] | None,
    transform_key: str | Mapping[str, str] | None,
    layers: Sequence[str],
) -> dict[str, tuple[UnitTransform, str]]:
    if unit_transform is None:
        return {}
    fns = (
        dict(unit_transform)
        if isinstance(unit_transform, Mapping)
        else {la: unit_transform for la in layers}
    )
    unknown = set(fns) - set(layers)
    if unknown:
        raise DissectError(f"unit_transform given for layers {sorted(unknown)} not dissected")
    out = {}
    for la, fn in fns.items():
        key = transform_key.get(la) if isinstance(transform_key, Mapping) else transform_key
        if not key:
            raise DissectError(
                f"unit_transform for layer {la!r} needs a transform_key: a string naming the "
                "transform and its parameters, which goes into the results cache key"
            )
        out[la] = (fn, str(key))
    return out


def _apply(
    transform: tuple[UnitTransform, str] | None, maps: torch.Tensor, layer: str
) -> torch.Tensor:
    if transform is None:
        return maps
    out = transform[0](maps)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != maps.shape[0]:
        raise DissectError(
            f"unit_transform of layer {layer!r} must return a (B, U, h, w) tensor for a "
            f"(B, U, h, w) input; got {getattr(out, 'shape', type(out))}"
        )
    if out.dtype not in (torch.float32, torch.float64):
        out = out.float()
    return out.contiguous()


def _check_settings(
    quantile: float, method: str, unit_area: str, iou_threshold: float, top_k: int, batch_size: int
) -> None:
    validate_quantile(quantile, method)
    if unit_area not in MODES:
        raise DissectError(f"unknown --unit-area {unit_area!r}; use one of {list(MODES)}")
    if not 0 <= iou_threshold < 1:
        raise DissectError(f"--iou-threshold must lie in [0, 1), got {iou_threshold}")
    if top_k < 1:
        raise DissectError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise DissectError(f"--batch-size must be at least 1, got {batch_size}")


class _Run:
    """What every layer of one call shares."""

    def __init__(
        self,
        store: BrodenStore,
        concepts: Sequence[str] | str | None,
        out: Path,
        device: torch.device,
        quantile: float,
        method: str,
        unit_area: str,
        iou_threshold: float,
        top_k: int,
        batch_size: int,
        workers: int,
        legacy_csv: bool,
        progress: bool,
        sources: Sequence[str] | str | None = None,
        ranks: Ranks = LOCAL,
        amp: bool = False,
    ):
        self.store = store
        self.selection = select_concepts(store, concepts)
        self.sources = resolve_sources(store, sources)
        self.images = source_indices(store, self.sources)  # store indices dissected
        self.ranks = ranks
        self.local = ranks.part(store, self.images)  # those this process reads
        self.amp = amp
        self.out = out
        self.device = device
        self.quantile, self.method, self.unit_area = quantile, method, unit_area
        self.iou_threshold, self.top_k = iou_threshold, top_k
        self.k_images = max(MIN_TOP_IMAGES, top_k)
        self.batch_size, self.workers = batch_size, workers
        self.legacy_csv, self.progress = legacy_csv, progress and ranks.is_main
        self.tables = LabelTables(self.selection, device)
        self.store_fp = store.fingerprint()
        self.timings: dict[str, float] = {}
        self.passes = 0  # forward passes (or reads of the activations) made

    @property
    def n_images(self) -> int:
        """Images dissected, over every rank."""
        return len(self.images)

    def batches(self, images: bool, labels: bool) -> StoreBatches:
        """This process's batches."""
        local = None if len(self.local) == len(self.store) else self.local
        return StoreBatches(self.store, self.batch_size, images, labels, local)

    def key(
        self,
        layer: str,
        source: dict[str, Any],
        thresholds: np.ndarray | None,
        transform: str | None,
    ) -> str:
        if thresholds is None:
            thr: Any = {"quantile": self.quantile, "method": self.method}
        else:
            arr = np.ascontiguousarray(np.asarray(thresholds, np.float64))
            thr = {"given": hashlib.sha256(arr.tobytes()).hexdigest()[:20]}
        ids = hashlib.sha256(self.selection.ids.astype(np.int64).tobytes()).hexdigest()[:20]
        parts: dict[str, Any] = {
            "source": source,
            "layer": layer,
            "store": self.store_fp,
            "concepts": ids,
            "thresholds": thr,
            "transform": transform,
            "top_images": self.k_images,
        }
        # only when set, so that the keys of earlier results (all images, fp32) still hold
        if self.sources is not None:
            parts["sources"] = self.sources
        if self.amp:
            parts["amp"] = True
        return cache_key(parts)

    def labels(self, batch: StoreBatch) -> Any:
        return self.tables.batch(batch.pixel, batch.image, batch.counts)

    def summary_extra(
        self, layer: _Layer | None, source: dict[str, Any], key: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        s = self.store
        return {
            "cache_key": key,
            "settings": {
                "quantile": self.quantile,
                "quantile_method": self.method if layer is None or layer.given is None else None,
                "thresholds": "given"
                if layer is not None and layer.given is not None
                else "computed",
                "top_images": self.k_images,
                "top_k": self.top_k,
                "batch_size": self.batch_size,
                "device": str(self.device),
                "sources": self.sources,
                "distributed": self.ranks.describe(),
                **settings,
            },
            "store": {
                "path": str(Path(s.path).resolve()),
                "fingerprint": self.store_fp,
                "images": len(s),
                "dissected_images": self.n_images,
                "image_size": s.image_size,
                "label_size": s.label_size,
            },
            "concepts": {
                "selection": self.selection.described,
                "fingerprint": self.selection.fingerprint,
                "count": len(self.selection),
                "categories": self.selection.categories,
            },
            "model": source,
            "timings": dict(self.timings),
        }

    def reuse(
        self, name: str, directory: Path, key: str, source: dict[str, Any], settings: dict[str, Any]
    ) -> DissectionResult | None:
        """The layer's results from its cached counts, if ``directory`` holds them under
        ``key`` (rank 0 reads them and sends them to the other ranks)."""
        found = None
        if self.ranks.is_main:
            cached = read_cached(directory, key)
            if cached is not None:
                found = (cached, LayerSummary.read(directory))
        found = self.ranks.broadcast(found)
        if found is None:
            return None
        cached, old = found
        extra = self.summary_extra(None, source, key, settings)
        extra["settings"].update(
            quantile_method=old.settings.quantile_method, thresholds=old.settings.thresholds
        )
        extra["timings"] = dict(old.timings)
        res = write_layer(
            directory,
            name,
            cached,
            self.selection,
            self.unit_area,
            self.iou_threshold,
            extra,
            self.legacy_csv,
            reused=True,
            write=self.ranks.is_main,
        )
        res.notes.append(
            f"{name}: reused the counts cached in {directory} (same model, store, concepts "
            "and threshold settings; re-scored with this run's unit area and IoU threshold)"
        )
        return res

    def write(
        self, job: _Layer, source: dict[str, Any], settings: dict[str, Any]
    ) -> DissectionResult:
        extra = self.summary_extra(job, source, job.key, settings)
        t0 = time.perf_counter()
        res = write_layer(
            job.directory,
            job.name,
            job.counts(self.selection),
            self.selection,
            self.unit_area,
            self.iou_threshold,
            extra,
            self.legacy_csv,
            reused=False,
            write=self.ranks.is_main,
        )
        res.summary.timings["scoring_s"] = round(time.perf_counter() - t0, 3)
        if self.ranks.is_main:
            res.summary.write(job.directory)
        return res

    def run_passes(
        self,
        jobs: list[_Layer],
        first: Callable[[bool], Batches],
        replay: Callable[[list[_Layer]], Batches],
    ) -> None:
        """Pass 1 over ``first(labels_needed)`` (observe; tally for layers with thresholds),
        then, for the others, pass 2 over ``replay(layers)``; then every rank's counts
        merged."""
        n = len(self.local)
        need = [j for j in jobs if j.given is None]
        t0 = time.perf_counter()
        bar = _bar(n, "thresholds" if need else "tally", self.progress)
        tally_now = [j for j in jobs if j.given is not None]
        with _device_errors(self.device, self.batch_size), torch.inference_mode():
            for batch, maps in first(bool(tally_now)):
                labels = self.labels(batch) if tally_now else None
                for j in jobs:
                    j.observe(maps[j.name], batch)
                    if j.given is not None:
                        j.add(maps[j.name], labels)
                bar.update(len(batch))
            bar.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # in-memory copies made with non_blocking
            for j in need:
                j.finish_thresholds(self.quantile, self.method, self.ranks)
            self.timings["pass1_s"] = round(time.perf_counter() - t0, 3)
            if need:
                t1 = time.perf_counter()
                bar = _bar(n, "tally", self.progress)
                for batch, maps in replay(need):
                    labels = self.labels(batch)
                    for j in need:
                        j.add(maps[j.name], labels)
                    bar.update(len(batch))
                bar.close()
                self.timings["pass2_s"] = round(time.perf_counter() - t1, 3)
            for j in jobs:
                j.merge(self.ranks)


def dissect(
    store: BrodenStore | str | os.PathLike[str],
    model: str | nn.Module,
    layers: Sequence[str] | str,
    *,
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    concepts: Sequence[str] | str | None = None,
    quantile: float = 0.005,
    quantile_method: str = "exact",
    thresholds: ThresholdSpec = None,
    unit_area: str = "original",
    iou_threshold: float = 0.04,
    batch_size: int = 32,
    workers: int = 2,
    device: str | torch.device = "auto",
    normalize: str | Normalization = "imagenet",
    input_size: int | None = None,
    cache_activations: str = "auto",
    memory_budget: str | int = "2GiB",
    top_k: int = 10,
    legacy_csv: bool = False,
    layout: str = "auto",
    prefix_tokens: int | None = None,
    unit_transform: UnitTransform | Mapping[str, UnitTransform] | None = None,
    transform_key: str | Mapping[str, str] | None = None,
    force: bool = False,
    progress: bool = True,
    sources: Sequence[str] | str | None = None,
    distributed: bool = False,
    amp: bool = False,
) -> dict[str, DissectionResult]:
    """Dissect ``layers`` of ``model`` against ``store``; write ``out/<layer>/``.

    ``model`` is a spec (``dissect.zoo:resnet18``, ``torchvision:resnet18``, a
    TorchScript or .pt2 file; see :mod:`broden.dissect.models`) or an ``nn.Module``.
    ``unit_transform`` (one callable, or one per layer) maps each batch's (B, U, h, w)
    activations to the maps that are dissected (e.g. a channel rotation); it needs a
    ``transform_key`` naming it for the results cache. A layer whose results in ``out``
    were made with the same cache key is re-scored from its stored counts instead of
    recomputed, unless ``force``. Returns the results by layer.

    ``sources`` (names, or comma-separated): dissect only the images of these sources
    (thresholds, counts and top images over them alone). ``distributed``: this process
    is one rank of a ``torchrun`` launch (:mod:`broden.dissect.distributed`); every rank returns
    the same results, rank 0 writes them. ``amp``: the model's forward pass under
    autocast (float16 on CUDA, bfloat16 on the CPU), the maps dissected as float32.

    >>> res = dissect("broden.zarr", "dissect.zoo:resnet18", ["layer3", "layer4"],
    ...               out="results")                                   # doctest: +SKIP
    >>> print(res["layer4"].headline())                                # doctest: +SKIP
    """
    t_start = time.perf_counter()
    layers = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    if not layers:
        raise DissectError("no layers to dissect; name at least one with --layer")
    _check_settings(quantile, quantile_method, unit_area, iou_threshold, top_k, batch_size)
    if cache_activations not in CACHE_CHOICES:
        raise DissectError(f"--cache-activations {cache_activations!r}: use auto, yes or no")
    if layout not in LAYOUTS:
        raise DissectError(f"unknown --layout {layout!r}; use one of {list(LAYOUTS)}")
    budget = parse_size(memory_budget)
    norm = normalize if isinstance(normalize, Normalization) else parse_normalize(normalize)
    st = _open(store)
    ranks, dev = _ranks(distributed, device)
    given = _resolve_thresholds(thresholds, layers)
    transforms = _transforms(unit_transform, transform_key, layers)
    t0 = time.perf_counter()
    loaded: LoadedModel = load_model(model, weights)
    # check the layer names before any work
    LayerCapture(loaded.module, layers)
    t_load = time.perf_counter() - t0
    size = input_size or loaded.input_size or st.image_size
    source = {
        "spec": loaded.spec,
        "weights": loaded.weights,
        "fingerprint": loaded.fingerprint,
        "input_size": size,
        "normalize": [list(norm.mean), list(norm.std)],
        "layout": layout,
        "prefix_tokens": prefix_tokens,
    }
    run = _Run(
        st,
        concepts,
        Path(out),
        dev,
        quantile,
        quantile_method,
        unit_area,
        iou_threshold,
        top_k,
        batch_size,
        workers,
        legacy_csv,
        progress,
        sources,
        ranks,
        bool(amp),
    )
    run.timings["model_load_s"] = round(t_load, 3)
    settings = {
        "normalize": norm.name,
        "input_size": size,
        "layout": layout,
        "prefix_tokens": prefix_tokens,
        "workers": workers,
        "cache_activations": cache_activations,
        "amp": bool(amp),
    }

    results: dict[str, DissectionResult] = {}
    jobs: list[_Layer] = []
    for la in layers:
        tkey = transforms[la][1] if la in transforms else None
        key = run.key(la, source, given.get(la), tkey)
        directory = layer_dir(run.out, la)
        s = {**settings, "transform": tkey}
        reused = None if force else run.reuse(la, directory, key, source, s)
        if reused is not None:
            results[la] = reused
        else:
            jobs.append(_Layer(la, directory, key, given.get(la)))
    if jobs:
        _dissect_model(
            run,
            loaded,
            jobs,
            norm,
            size,
            layout,
            prefix_tokens,
            transforms,
            cache_activations,
            budget,
        )
        run.timings["total_s"] = round(time.perf_counter() - t_start, 3)
        for j in jobs:
            tkey = transforms[j.name][1] if j.name in transforms else None
            results[j.name] = run.write(
                j, source, {**settings, "transform": tkey, "passes": run.passes}
            )
    return {la: results[la] for la in layers}


def _ranks(distributed: bool, device: str | torch.device) -> tuple[Ranks, torch.device]:
    """This process's ranks and device (under ``distributed``: joins the process group)."""
    if not distributed:
        return LOCAL, resolve_device(device)
    from broden.dissect.distributed import setup

    return setup(device)


def _dissect_model(
    run: _Run,
    loaded: LoadedModel,
    jobs: list[_Layer],
    norm: Normalization,
    size: int,
    layout: str,
    prefix_tokens: int | None,
    transforms: dict[str, tuple[UnitTransform, str]],
    cache_activations: str,
    budget: int,
) -> None:
    st, dev = run.store, run.device
    module = loaded.module.to(dev)
    fixed = loaded.batch_size
    if fixed is not None and run.batch_size > fixed:
        run.batch_size = fixed  # an exported model with a static batch size: never more
    names = [j.name for j in jobs]

    def forward(
        images: torch.Tensor, capture: LayerCapture, which: list[str]
    ) -> dict[str, torch.Tensor]:
        x = preprocess(images, norm, size)
        n = x.shape[0]
        if fixed is not None and n != fixed:
            x = torch.cat([x, x[-1:].expand(fixed - n, *x.shape[1:])])
        try:
            with autocast(dev, run.amp):
                outs = capture.run(x)
        except DissectError:
            raise
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            raise DissectError(
                f"the model failed on a batch of shape {tuple(x.shape)}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''} (check --input-size and --normalize)"
            ) from None
        maps = {}
        for la in which:
            m = to_unit_maps(outs[la], la, layout, prefix_tokens)[:n]
            maps[la] = _apply(transforms.get(la), m, la)
        return maps

    n_local = len(run.local)
    with _device_errors(dev, run.batch_size), torch.inference_mode():
        first_image = int(run.images[0])
        probe = st.read_block(first_image, first_image + 1)
        with LayerCapture(module, names) as cap:
            pm = forward(torch.from_numpy(probe.images).to(dev), cap, names)
    for j in jobs:
        j.setup(
            pm[j.name],
            run.n_images,
            run.quantile,
            run.method,
            run.k_images,
            run.tables,
            st.label_size,
        )
    need = [j for j in jobs if j.given is None]
    need_bytes = sum(
        n_local * j.units * j.shape[0] * j.shape[1] * (4 if j.dtype == torch.float32 else 8)
        for j in need
    )
    keep = bool(need) and (
        cache_activations == "yes" or (cache_activations == "auto" and need_bytes <= budget)
    )
    if keep:
        try:
            for j in need:
                j.cache = torch.empty(
                    (n_local, j.units, *j.shape), dtype=j.dtype, pin_memory=dev.type == "cuda"
                )
        except (RuntimeError, MemoryError):
            for j in need:
                j.cache = None
            if cache_activations == "yes":
                raise DissectError(
                    f"cannot keep {need_bytes / 2**30:.1f} GiB of activations in memory; use "
                    "--cache-activations no (two forward passes) or auto"
                ) from None
            keep = False  # auto: fall back to two forward passes
    run.passes = 1 if not need else (1 if keep else 2)

    def first(labels: bool) -> Batches:
        ds = run.batches(images=True, labels=labels)
        with LayerCapture(module, names) as cap:
            for batch in iterate(ds, run.workers, dev):
                assert batch.images is not None
                yield batch, forward(batch.images, cap, names)

    def replay(todo: list[_Layer]) -> Batches:
        if keep:
            ds = run.batches(images=False, labels=True)
            for batch in iterate(ds, run.workers, dev):
                maps = {}
                for j in todo:
                    assert j.cache is not None
                    maps[j.name] = j.cache[batch.start : batch.stop].to(dev, non_blocking=True)
                yield batch, maps
            return
        ds = run.batches(images=True, labels=True)
        which = [j.name for j in todo]
        with LayerCapture(module, which) as cap:
            for batch in iterate(ds, run.workers, dev):
                assert batch.images is not None
                yield batch, forward(batch.images, cap, which)

    run.run_passes(jobs, first, replay)
    for j in jobs:
        j.cache = None


def activation_fingerprint(acts: Any, path: Path | None) -> str:
    """Identity of an activation array: for a file, its path, size, modification time and
    first and last MiB; for a Zarr folder, every file's size and time; in memory, its
    content."""
    h = hashlib.sha256()
    if path is not None and path.is_file():
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, stat.st_size - (1 << 20)))
            h.update(f.read())
    elif path is not None and path.is_dir():
        h.update(str(path.resolve()).encode())
        for p in sorted(path.rglob("*")):
            if p.is_file():
                s = p.stat()
                h.update(f"{p.relative_to(path)}|{s.st_size}|{s.st_mtime_ns}".encode())
    else:
        h.update(f"{tuple(acts.shape)}|{acts.dtype}".encode())
        step = max(1, (1 << 26) // max(1, int(np.prod(acts.shape[1:])) * 4))
        for a in range(0, acts.shape[0], step):
            chunk = acts[a : a + step]
            chunk = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else chunk
            h.update(np.ascontiguousarray(chunk).tobytes())
    return h.hexdigest()[:20]


def open_activations(activations: Any) -> tuple[Any, Path | None]:
    """Precomputed activations as an array-like (a memory-mapped .npy, a Zarr array, or
    the array given), and the file they came from (None for an in-memory array)."""
    if isinstance(activations, (str, os.PathLike)):
        path = Path(activations)
        if not path.exists():
            raise DissectError(f"--activations {path}: no such file or folder")
        if path.is_file() and path.suffix == ".npy":
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False), path
            except ValueError as e:
                raise DissectError(
                    f"--activations {path}: not a readable .npy array ({e})"
                ) from None
        try:
            import zarr

            arr = zarr.open_array(str(path), mode="r")
        except Exception as e:
            raise DissectError(
                f"--activations {path}: neither a .npy file nor a Zarr array ({type(e).__name__})"
            ) from None
        return arr, path
    if isinstance(activations, (np.ndarray, torch.Tensor)) or hasattr(activations, "shape"):
        return activations, None
    raise DissectError(f"activations must be a .npy/Zarr path or an array, not {type(activations)}")


def score_activations(
    store: BrodenStore | str | os.PathLike[str],
    activations: Any,
    *,
    out: str | os.PathLike[str],
    layer: str | None = None,
    concepts: Sequence[str] | str | None = None,
    quantile: float = 0.005,
    quantile_method: str = "exact",
    thresholds: ThresholdSpec = None,
    unit_area: str = "original",
    iou_threshold: float = 0.04,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device = "auto",
    top_k: int = 10,
    legacy_csv: bool = False,
    layout: str = "auto",
    prefix_tokens: int | None = None,
    unit_transform: UnitTransform | None = None,
    transform_key: str | None = None,
    force: bool = False,
    progress: bool = True,
    sources: Sequence[str] | str | None = None,
    distributed: bool = False,
) -> DissectionResult:
    """Dissect precomputed activations: an N×U×h×w array (.npy path, Zarr array path, or an
    array in memory; tokens N×T×D and channels-last arrays are read as in
    :func:`broden.dissect.hooks.to_unit_maps`) whose row i belongs to store image i. The layer's
    name is ``layer`` (default: the file's stem, or ``activations``).

    With ``sources`` (see :func:`dissect`) only those sources' images are dissected; the
    activations then hold either every store image (row i: image i) or only the
    selected ones (row j: the j-th selected image, in store order). ``distributed``: as
    for :func:`dissect`, each rank reading its own rows.

    >>> r = score_activations("broden.zarr", "conv5.npy", out="results")  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    _check_settings(quantile, quantile_method, unit_area, iou_threshold, top_k, batch_size)
    acts, path = open_activations(activations)
    name = layer or (path.stem if path is not None else "activations")
    st = _open(store)
    if len(acts.shape) < 2:
        raise DissectError(f"activations of shape {tuple(acts.shape)}: expected N×U×h×w")
    ranks, dev = _ranks(distributed, device)
    given = _resolve_thresholds(thresholds, [name])
    transforms = _transforms(unit_transform, transform_key, [name])
    source = {
        "activations": str(path.resolve()) if path is not None else "array",
        "fingerprint": activation_fingerprint(acts, path),
        "layout": layout,
        "prefix_tokens": prefix_tokens,
    }
    run = _Run(
        st,
        concepts,
        Path(out),
        dev,
        quantile,
        quantile_method,
        unit_area,
        iou_threshold,
        top_k,
        batch_size,
        workers,
        legacy_csv,
        progress,
        sources,
        ranks,
    )
    every = acts.shape[0] == len(st)  # else: one row per selected image
    if not every and acts.shape[0] != run.n_images:
        sel = f" ({run.n_images} of --sources {','.join(run.sources)})" if run.sources else ""
        raise DissectError(
            f"the activations hold {acts.shape[0]} images but the store {st.path} has {len(st)}"
            f"{sel}; row i of the activations must belong to store image i"
        )
    tkey = transforms[name][1] if name in transforms else None
    key = run.key(name, source, given.get(name), tkey)
    directory = layer_dir(run.out, name)
    settings = {
        "layout": layout,
        "prefix_tokens": prefix_tokens,
        "transform": tkey,
        "workers": workers,
    }
    reused = None if force else run.reuse(name, directory, key, source, settings)
    if reused is not None:
        return reused
    job = _Layer(name, directory, key, given.get(name))
    transform = transforms.get(name)

    def read(batch: StoreBatch) -> dict[str, torch.Tensor]:
        idx = batch.indices()
        rows = idx if every else np.searchsorted(run.images, idx)
        a, b = int(rows[0]), int(rows[-1]) + 1  # one slice (within a shard of the store)
        chunk = acts[a:b]
        t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
        if b - a != len(rows):
            t = t[torch.from_numpy(rows - a)]
        m = to_unit_maps(t.to(dev), name, layout, prefix_tokens)
        return {name: _apply(transform, m, name)}

    def batches(labels: bool) -> Batches:
        ds = run.batches(images=False, labels=labels)
        for batch in iterate(ds, workers, dev):
            yield batch, read(batch)

    with _device_errors(dev, batch_size), torch.inference_mode():
        empty = torch.zeros(0)
        probe = read(StoreBatch(0, 1, None, empty, empty, empty, run.images[:1]))
    job.setup(
        probe[name],
        run.n_images,
        quantile,
        quantile_method,
        run.k_images,
        run.tables,
        st.label_size,
    )
    run.passes = 1 if job.given is not None else 2
    run.run_passes([job], batches, lambda todo: batches(True))
    run.timings["total_s"] = round(time.perf_counter() - t_start, 3)
    return run.write(job, source, {**settings, "passes": run.passes})
