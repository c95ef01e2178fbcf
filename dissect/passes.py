"""What every layer of one dissection call shares (:class:`Run`): the store and the images
this process reads, the concept selection and label tables, the settings, the results
cache (keys, reuse, files), and the two passes over the data."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from broden.dissect.concepts import select_concepts
from broden.dissect.data import StoreBatch, StoreBatches, resolve_sources, source_indices
from broden.dissect.distributed import LOCAL, Ranks
from broden.dissect.errors import DissectError
from broden.dissect.explain.collect import (
    DatasetAtoms,
    explain_layer,
    read_formulas,
    remove_formulas,
    write_formulas,
)
from broden.dissect.explain.formulas import Explanation
from broden.dissect.layerjob import LayerJob
from broden.dissect.results import DissectionResult, cache_key, read_cached, write_layer
from broden.dissect.settings import DissectSettings
from broden.dissect.significance_collect import PVALUES, LayerSignificance
from broden.dissect.summary import SUMMARY, LayerSummary
from broden.dissect.tally import LabelTables
from broden.dissect.topimages import TOPMAPS
from broden.store import BrodenStore

#: batches of store images with each layer's maps
Batches = Iterator[tuple[StoreBatch, dict[str, torch.Tensor]]]


@contextmanager
def device_errors(device: torch.device, batch_size: int) -> Iterator[None]:
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


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)


class Run:
    """The state one call of :func:`~broden.dissect.dissect` or
    :func:`~broden.dissect.score_activations` shares across its layers."""

    def __init__(
        self,
        store: BrodenStore,
        settings: DissectSettings,
        out: Path,
        device: torch.device,
        ranks: Ranks = LOCAL,
    ):
        self.store, self.settings, self.out, self.device, self.ranks = (
            store, settings, out, device, ranks
        )  # fmt: skip
        self.selection = select_concepts(store, settings.concepts)
        self.sources = resolve_sources(store, settings.sources)
        self.images = source_indices(store, self.sources)  # store indices dissected
        self.local = ranks.part(store, self.images)  # those this process reads
        self.batch_size = settings.batch_size  # at most an exported model's fixed batch
        self.progress = settings.progress and ranks.is_main
        self.tables = LabelTables(self.selection, device)
        self.store_fp = store.fingerprint()
        self.timings: dict[str, float] = {}
        #: with formulas on, the concept masks of the images the tally sees
        self.atoms = DatasetAtoms(self.selection, store.label_size) if settings.formulas else None
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
        """The results cache key of ``layer`` (see :mod:`broden.dissect.results`)."""
        ids = self.selection.ids.astype(np.int64).tobytes()
        parts: dict[str, Any] = {
            "source": source,
            "layer": layer,
            "store": self.store_fp,
            "concepts": hashlib.sha256(ids).hexdigest()[:20],
            "transform": transform,
            **self.settings.key_parts(thresholds),
        }
        # only when set, so that the keys of earlier results (all images) still hold
        if self.sources is not None:
            parts["sources"] = self.sources
        return cache_key(parts)

    def labels(self, batch: StoreBatch) -> Any:
        labels = self.tables.batch(batch.pixel, batch.image, batch.counts)
        if self.atoms is not None:
            labels.atoms = self.atoms.batch_atoms(batch, labels)
        return labels

    def header(
        self, layer: LayerJob | None, source: dict[str, Any], key: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        s, st = self.store, self.settings
        return {
            "cache_key": key,
            "settings": {
                "quantile": st.quantile,
                "quantile_method": st.quantile_method
                if layer is None or layer.given is None
                else None,
                "thresholds": "given"
                if layer is not None and layer.given is not None
                else "computed",
                "top_images": st.top_images,
                "top_k": st.top_k,
                "batch_size": self.batch_size,
                "device": str(self.device),
                "sources": self.sources,
                "distributed": self.ranks.describe(),
                **st.formula_settings(),
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
            formulas = self._cached_formulas(directory)
            if cached is not None and (formulas is not None or not self.settings.formulas):
                found = (cached, LayerSummary.read(directory), formulas)
        found = self.ranks.broadcast(found)
        if found is None:
            return None
        cached, old, formulas = found
        extra = self.header(None, source, key, settings)
        extra["settings"].update(
            quantile_method=old.settings.quantile_method, thresholds=old.settings.thresholds
        )
        if old.settings.layout_used is not None:  # how the cached layer's output was read
            extra["settings"].update(
                layout_used=old.settings.layout_used,
                prefix_tokens_used=old.settings.prefix_tokens_used,
            )
        extra["timings"] = dict(old.timings)
        res = write_layer(
            directory,
            name,
            cached,
            self.selection,
            self.settings.unit_area,
            self.settings.iou_threshold,
            extra,
            self.settings.legacy_csv,
            reused=True,
            write=self.ranks.is_main,
            alpha=self.settings.alpha,
        )
        res.formulas = formulas
        if cached.p_values is None:
            res.notes.append(
                f"{name}: the cached counts have no {PVALUES} (written before significance "
                "tests existed): p_value and significant are left empty; --force computes them"
            )
        res.notes.append(
            f"{name}: reused the counts cached in {directory} (same model, store, concepts "
            "and threshold settings; re-scored with this run's unit area and IoU threshold)"
        )
        return res

    def write(
        self, job: LayerJob, source: dict[str, Any], settings: dict[str, Any]
    ) -> DissectionResult:
        extra = self.header(job, source, job.key, {**settings, **job.reading_settings()})
        t0 = time.perf_counter()
        if self.ranks.is_main:
            save_top_maps(job)
        formulas, formulas_s = self._formulas(job)
        res = write_layer(
            job.directory,
            job.name,
            job.counts(self.selection),
            self.selection,
            self.settings.unit_area,
            self.settings.iou_threshold,
            extra,
            self.settings.legacy_csv,
            reused=False,
            write=self.ranks.is_main,
            alpha=self.settings.alpha,
        )
        res.summary.timings["scoring_s"] = round(time.perf_counter() - t0, 3)
        res.notes.extend(shape_notes(res))
        if formulas is not None:
            res.formulas = formulas
            res.summary.timings["formulas_s"] = formulas_s
        if self.ranks.is_main:
            res.summary.write(job.directory)
        return res

    def _cached_formulas(self, directory: Path) -> list[Explanation] | None:
        """A cached layer's formulas (None when off, or when its file is missing)."""
        if not self.settings.formulas:
            return None
        return read_formulas(directory, self.selection.names)

    def _formulas(self, job: LayerJob) -> tuple[list[Explanation] | None, float]:
        """With formulas on: every unit's best formula, written to ``formulas.json`` and
        ``formulas.csv``, and the seconds the search took; off: None, and the layer's old
        formula files removed."""
        if self.atoms is None or job.formula_counts is None:
            if self.ranks.is_main:
                remove_formulas(job.directory)
            return None, 0.0
        t0 = time.perf_counter()
        st = self.settings
        search = self.atoms.search(len(self.local), st.formulas, st.beam)
        found = explain_layer(search, job.formula_counts, job.name, self.progress)
        job.formula_counts = None
        if self.ranks.is_main:
            write_formulas(job.directory, found)
        return found, round(time.perf_counter() - t0, 3)

    def run_passes(
        self,
        jobs: list[LayerJob],
        first: Callable[[bool], Batches],
        replay: Callable[[list[LayerJob]], Batches],
    ) -> None:
        """Pass 1 over ``first(labels_needed)`` (observe; tally for layers with thresholds),
        then, for the others, pass 2 over ``replay(layers)``; then every rank's counts
        merged."""
        n = len(self.local)
        need = [j for j in jobs if j.given is None]
        t0 = time.perf_counter()
        bar = progress_bar(n, "thresholds" if need else "tally", self.progress)
        tally_now = [j for j in jobs if j.given is not None]
        for j in jobs:  # the significance tests' inputs, collected in the same passes
            j.track(
                LayerSignificance(
                    j.units, self.selection, self.tables, self.images, self.store.label_size
                )
            )
        with device_errors(self.device, self.batch_size), torch.inference_mode():
            for batch, maps in first(bool(tally_now)):
                labels = self.labels(batch) if tally_now else None
                for j in jobs:
                    j.observe(maps[j.name], batch)
                    if j.given is not None:
                        j.add(maps[j.name], labels, batch.indices())
                bar.update(len(batch))
            bar.close()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # in-memory copies made with non_blocking
            for j in need:
                j.finish_thresholds(self.settings, self.ranks)
            self.timings["pass1_s"] = round(time.perf_counter() - t0, 3)
            if need:
                t1 = time.perf_counter()
                bar = progress_bar(n, "tally", self.progress)
                for batch, maps in replay(need):
                    labels = self.labels(batch)
                    for j in need:
                        j.add(maps[j.name], labels, batch.indices())
                    bar.update(len(batch))
                bar.close()
                self.timings["pass2_s"] = round(time.perf_counter() - t1, 3)
            for j in jobs:
                j.merge(self.ranks)


def save_top_maps(job: LayerJob) -> None:
    """``topmaps.npy`` (the maps the report draws its masks from), written after the
    summary is removed and before it is written again, so that a layer folder with a
    summary never holds the maps of another run."""
    job.directory.mkdir(parents=True, exist_ok=True)
    (job.directory / SUMMARY).unlink(missing_ok=True)
    maps = job.top_maps()
    if maps is None:
        (job.directory / TOPMAPS).unlink(missing_ok=True)
    else:
        np.save(job.directory / TOPMAPS, maps, allow_pickle=False)


def shape_notes(res: DissectionResult) -> list[str]:
    """Warnings about a layer's map shape: a 1×1 (pooled) layer has one value per image,
    so every active unit covers whole images and its IoU measures co-occurrence with
    image-level labels, not localisation (with few concepts, nearly every unit passes)."""
    if tuple(res.summary.activation_shape) != (1, 1):
        return []
    return [
        f"warning: {res.layer} has 1×1 maps (a pooled or fully connected layer): each unit "
        "is on or off for whole images, so its IoU measures co-occurrence with image-level "
        "labels, not localisation; dissect a layer with a spatial map to find detectors"
    ]
