"""The unit maps of the images a report shows. A results folder is data: the maps come
from what ``broden dissect`` wrote (:func:`saved_maps`: ``OUT/<layer>/topmaps.npy``, the
maps of each unit's top images as the tally saw them). Results of an earlier broden,
without that file, are drawn from the recorded activation file (:func:`activation_maps`)
or by running only the top images through a model the user names, checked against the
recorded fingerprint (:func:`model_maps`); the spec recorded in ``summary.json`` is never
imported or called."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broden.dissect.errors import DissectError
from broden.dissect.report.read import LayerResults
from broden.dissect.summary import TOPMAPS, ActivationsRecord, ModelRecord
from broden.dissect.transforms import UnitTransform, apply_transform

if TYPE_CHECKING:
    import os

    import torch
    from torch import nn

    from broden.store import BrodenStore


@dataclass
class ShownLayer:
    """One layer in the report: its results, the images shown, and how masks are made."""

    layer: LayerResults
    store: BrodenStore
    k: int
    notes: list[str] = field(default_factory=list)
    maps: torch.Tensor | None = None  # (units, k, h, w) maps of the shown images

    @property
    def shown(self) -> np.ndarray:
        return self.layer.top_indices[:, : self.k]


def rerun_key(job: ShownLayer) -> str:
    s = job.layer.summary
    return json.dumps(
        {"model": s.model.model_dump(mode="json"), "store": str(job.store.path),
         "amp": s.settings.amp},
        sort_keys=True,
    )  # fmt: skip


def _gather(
    job: ShownLayer, images: np.ndarray, maps: torch.Tensor, where: dict[int, tuple[Any, Any]]
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


def _pairs(job: ShownLayer) -> dict[int, tuple[np.ndarray, np.ndarray]]:
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


def _alloc(job: ShownLayer, maps: torch.Tensor) -> None:
    import torch

    U, k = job.shown.shape
    job.maps = torch.zeros((U, k, maps.shape[2], maps.shape[3]), dtype=maps.dtype)


@dataclass(frozen=True)
class GivenModel:
    """The model the user names for drawing masks of results without ``topmaps.npy``
    (``--model``, ``--weights``): checked against the recorded fingerprint, never taken
    from ``summary.json``."""

    spec: str | nn.Module
    weights: str | os.PathLike[str] | None = None


def saved_maps(job: ShownLayer) -> int:
    """The maps of ``topmaps.npy`` into ``job.maps`` (its first ``job.k`` per unit, fewer if
    it holds fewer); return how many per unit it holds (0: no usable file, with a note
    when the file is there but does not belong to these results)."""
    import torch

    path = job.layer.directory / TOPMAPS
    if not path.is_file():
        return 0
    layer = job.layer
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        job.notes.append(f"{TOPMAPS} not used: it is not a readable array ({type(e).__name__})")
        return 0
    units, recorded = layer.top_indices.shape
    want = (units, tuple(layer.summary.activation_shape))
    if (
        arr.ndim != 4
        or arr.dtype.kind != "f"
        or (arr.shape[0], arr.shape[2:]) != want
        or not 0 < arr.shape[1] <= recorded
    ):
        job.notes.append(
            f"{TOPMAPS} not used: it holds {arr.dtype} maps of shape {arr.shape}, not "
            f"({units}, ≤ {recorded}, {want[1][0]}, {want[1][1]}) float maps of this layer"
        )
        return 0
    k = min(job.k, arr.shape[1])
    maps = np.array(arr[:, :k])
    got = maps.reshape(units, k, -1).max(axis=2).astype(np.float64)
    if not np.isfinite(maps).all() or not np.allclose(
        got, layer.top_values[:, :k], rtol=1e-6, atol=0.0
    ):
        job.notes.append(
            f"{TOPMAPS} not used: its maps are not those of the top images in topk.npz "
            "(the folder mixes files of different runs)"
        )
        return 0
    job.maps = torch.from_numpy(maps)
    return int(arr.shape[1])


def model_maps(
    jobs: list[ShownLayer],
    transforms: Mapping[str, UnitTransform],
    given: GivenModel,
    device: str,
    batch_size: int,
) -> None:
    """Run the shown images of ``jobs`` (one model, one store) through the ``given`` model
    (:meth:`ModelRunner.from_record`: it must have the recorded fingerprint) and keep each
    shown (unit, image) map."""
    import torch

    from broden.dissect.data import resolve_device
    from broden.dissect.runner import ModelRunner

    first = jobs[0]
    record = first.layer.summary.model
    assert isinstance(record, ModelRecord)
    hint = "; or pass --no-masks (masks=False) to write the report without unit masks"
    try:
        runner = ModelRunner.from_record(
            record,
            first.layer.summary.settings,
            resolve_device(device),
            given.spec,
            given.weights,
            hint=hint,
        )
    except DissectError as e:
        raise DissectError(f"layer {first.layer.name}: {e}") from None
    names = list(dict.fromkeys(j.layer.name for j in jobs))
    pairs = [_pairs(j) for j in jobs]
    wanted = np.array(sorted(set().union(*(p.keys() for p in pairs))), np.int64)
    bs = runner.batch_size(batch_size)
    store = first.store
    with torch.inference_mode(), runner.capture(names, "the top images") as forward:
        for a in range(0, len(wanted), bs):
            idx = wanted[a : a + bs]
            x = torch.from_numpy(np.stack([store.image(int(i)) for i in idx])).to(runner.device)
            outs = forward(x)
            for j, p in zip(jobs, pairs, strict=True):
                name = j.layer.name
                m = apply_transform(transforms.get(name), outs[name], name)
                if j.maps is None:
                    _alloc(j, m)
                _gather(j, idx, m, p)


def activation_maps(job: ShownLayer, transforms: Mapping[str, UnitTransform]) -> None:
    """Maps of the shown images from the activation file recorded in summary.json, if it
    is still there and unchanged."""
    from broden.dissect.activations import (
        ActivationRows,
        activation_fingerprint,
        open_activations,
    )
    from broden.dissect.data import resolve_sources, source_indices

    record = job.layer.summary.model
    assert isinstance(record, ActivationsRecord)
    path = record.activations
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
    if activation_fingerprint(acts, p) != record.fingerprint:
        job.notes.append(
            f"unit masks not drawn: the activation file {path} changed since the dissection"
        )
        return
    selected = None  # rows of every store image, or of the dissected sources' images only
    if acts.shape[0] != len(job.store):
        sources = resolve_sources(job.store, job.layer.summary.settings.sources)
        selected = source_indices(job.store, sources)
    import torch

    cpu = torch.device("cpu")
    name = job.layer.name
    rows = ActivationRows(acts, name, record.layout, record.prefix_tokens, selected)
    pairs = _pairs(job)
    for i in sorted(pairs):
        m = apply_transform(transforms.get(name), rows.maps(np.array([i]), cpu), name)
        if job.maps is None:
            _alloc(job, m)
        _gather(job, np.array([i]), m, pairs)


def check_maxima(job: ShownLayer) -> None:
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
