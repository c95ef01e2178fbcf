"""One layer through the passes of a dissection (:class:`LayerJob`): pass 1 observes each
batch's maps (finiteness, the per-unit top values that give the thresholds, the top
images with the maps of the best ``top_k`` for the report, an in-memory copy when kept),
pass 2 tallies them against the labels (with formulas on, also each unit's active pixels
per atom of the concept masks: :mod:`broden.dissect.explain.collect`), and both collect
what the significance tests need (:mod:`broden.dissect.significance_collect`); under
``torchrun`` the ranks' top values, counts, top images, their maps and the significance
sums are merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from broden.dissect.concepts import ConceptSelection
from broden.dissect.data import StoreBatch
from broden.dissect.distributed import Ranks
from broden.dissect.errors import DissectError
from broden.dissect.explain.collect import UnitAtomCounts
from broden.dissect.hooks import Reading
from broden.dissect.results import LayerCounts
from broden.dissect.settings import DissectSettings
from broden.dissect.significance_collect import LayerSignificance
from broden.dissect.tally import LabelTables, Tally, threshold_for_dtype
from broden.dissect.thresholds import (
    StreamingTopK,
    check_thresholds,
    threshold_from_top,
    values_needed,
)
from broden.dissect.topimages import TopImages


class LayerJob:
    """One layer's state through the passes: its thresholds (given, or the streaming top-k
    that yields them), top images, tally and, when kept, its activations."""

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
        self.formula_counts: UnitAtomCounts | None = None
        #: set by :meth:`broden.dissect.passes.Run.run_passes` (see :meth:`track`)
        self.significance: LayerSignificance | None = None
        #: how the layer's output was read (layout used, prefix tokens dropped), once known
        self.reading: Reading | None = None

    def track(self, significance: LayerSignificance) -> None:
        """Collect what the significance tests need during the passes."""
        assert self.tally is not None
        self.significance = significance
        self.tally.pair_sink = significance.pairs

    def setup(
        self,
        maps: torch.Tensor,
        n_images: int,
        settings: DissectSettings,
        tables: LabelTables,
        label_size: int,
    ) -> None:
        """Size the state from the first batch's ``maps`` (B, U, h, w)."""
        _, U, h, w = maps.shape
        self.units, self.shape, self.dtype = U, (h, w), maps.dtype
        if self.given is not None:
            self.thresholds = check_thresholds(self.given, U, f"thresholds of layer {self.name}")
        else:
            k = values_needed(n_images * h * w, settings.quantile, settings.quantile_method)
            self.quant = StreamingTopK(U, k, maps.device, maps.dtype)
        self.top = TopImages(U, min(settings.top_images, n_images), keep=settings.top_k)
        self.tally = Tally(U, tables, label_size)
        if settings.formulas:  # each unit's active pixels per atom, from the tally's pass
            self.formula_counts = UnitAtomCounts(U)
            self.tally.sink = self.formula_counts.add

    def check(self, maps: torch.Tensor, batch: StoreBatch) -> None:
        """:class:`DissectError` for maps of the wrong shape (another number of units or
        another map size than the first batch's) or with NaN/inf values."""
        if maps.ndim != 4 or maps.shape[0] != len(batch) or maps.shape[1] != self.units:
            raise DissectError(
                f"layer {self.name!r}: maps of shape {tuple(maps.shape)} for "
                f"{batch.describe()}, expected ({len(batch)}, {self.units}, h, w)"
            )
        if tuple(maps.shape[2:]) != self.shape:
            h, w = self.shape
            raise DissectError(
                f"layer {self.name!r}: maps of {maps.shape[2]}×{maps.shape[3]} for "
                f"{batch.describe()}, but {h}×{w} for the first image; a layer's maps must "
                "keep one size for every image (does the model's output size depend on the "
                "batch or on the image?)"
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
        maxima = maps.amax(dim=(2, 3))
        self.top.add(maxima, batch.indices(), maps)
        if self.significance is not None:
            self.significance.observe(maxima, batch.indices())
        if self.quant is not None:
            self.quant.add(maps.transpose(0, 1).reshape(self.units, -1))
        if self.cache is not None:
            self.cache[batch.start : batch.stop].copy_(maps, non_blocking=True)

    def reading_settings(self) -> dict[str, Any]:
        """``layout_used`` and ``prefix_tokens_used`` for ``summary.json``'s settings."""
        r = self.reading
        if r is None:
            return {}
        return {"layout_used": r.layout, "prefix_tokens_used": r.prefix_tokens}

    def finish_thresholds(self, settings: DissectSettings, ranks: Ranks) -> None:
        """Thresholds from every rank's top values (collective when distributed)."""
        if self.quant is not None:
            top, seen = ranks.merge_top_values(self.quant.result(), self.quant.seen)
            q, method = settings.quantile, settings.quantile_method
            self.thresholds = threshold_from_top(top, seen, q, method)
            self.quant = None
        assert self.thresholds is not None

    def merge(self, ranks: Ranks) -> None:
        """Counts and top images of every rank (collective when distributed)."""
        assert self.tally is not None and self.top is not None
        t = self.tally
        images = torch.tensor([t.images], dtype=torch.int64, device=t.label_counts.device)
        ranks.sum_([t.intersection, *t.area.values(), t.label_counts, images])
        t.images = int(images)
        local = self.top.indices
        self.top.values, self.top.indices = ranks.merge_top_images(
            self.top.values, self.top.indices, self.top.k
        )
        if ranks.world > 1 and self.top.keep:  # every rank takes part, with or without maps
            if self.top.maps is None:
                self.top.maps = torch.zeros((self.units, 0, *self.shape), dtype=self.dtype)
            self.top.share_maps(local, ranks.sum_)
        if self.significance is not None:
            self.significance.merge(ranks)

    def top_maps(self) -> np.ndarray | None:
        """The maps of each unit's best ``top_k`` images (units, k, h, w), as the passes
        saw them (after the unit transform), in their dtype; None when none were kept."""
        assert self.top is not None
        if self.top.maps is None:
            return None
        return self.top.maps.cpu().numpy()

    def add(self, maps: torch.Tensor, labels: Any, indices: np.ndarray | None = None) -> None:
        """Pass 2 (or 1, with given thresholds): the tally of a batch (of the store images
        ``indices``, which the significance tests need)."""
        assert self.tally is not None and self.thresholds is not None
        if self.thr_dev is None or self.thr_dev.dtype != maps.dtype:
            self.thr_dev = threshold_for_dtype(self.thresholds, maps.dtype).to(maps.device)
        self.tally.add(maps, self.thr_dev, labels)
        if self.significance is not None:
            assert indices is not None, "the significance tests need the batch's indices"
            self.significance.add(labels, indices)

    def counts(self, selection: ConceptSelection) -> LayerCounts:
        """Everything the passes found, for scoring and the files."""
        assert self.tally is not None and self.top is not None and self.thresholds is not None
        counts = self.tally.counts(selection)
        sig = self.significance
        return LayerCounts(
            counts,
            self.thresholds,
            self.top.indices,
            self.top.values,
            self.shape,
            None if sig is None else sig.p_values(counts["intersection"]),
        )
