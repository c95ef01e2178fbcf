"""The dissection driver: :func:`dissect` (a model's layers) and :func:`score_activations`
(precomputed activations). The per-layer state is :mod:`broden.dissect.layerjob`, what
the layers share and the passes :mod:`broden.dissect.passes`, the model runs through
:mod:`broden.dissect.runner`, the options are :class:`~broden.dissect.settings.DissectSettings`.

For each layer that is not already in the results cache:

1. **Thresholds**: a pass feeds every batch's activations to a per-unit
   :class:`~broden.dissect.thresholds.StreamingTopK` and records each unit's top images; the
   thresholds follow from the kept values; the maps of each unit's ``top_k`` best images
   are kept for the report (``topmaps.npy``). Given thresholds skip the thresholds (the
   one pass still records the top images and their maps).
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

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from broden.dissect.activations import ActivationRows, activation_fingerprint, open_activations
from broden.dissect.data import iterate, resolve_device
from broden.dissect.distributed import LOCAL, Ranks
from broden.dissect.errors import DissectError
from broden.dissect.hooks import check_layout_layers, layout_for
from broden.dissect.layerjob import LayerJob
from broden.dissect.models import check_patch_grid, load_model, model_normalization
from broden.dissect.passes import Batches, Run, device_errors
from broden.dissect.results import DissectionResult, check_out, layer_dir
from broden.dissect.runner import Forward, InputPrep, Maps, ModelRunner
from broden.dissect.settings import DissectSettings
from broden.dissect.thresholds import load_thresholds
from broden.dissect.transforms import Keyed, UnitTransform, apply_transform, resolve_transforms
from broden.store import BrodenStore, open_store

#: given thresholds: an array or .npy file (one layer), a mapping layer → array or file, or
#: a folder of a previous run's output
ThresholdSpec = str | os.PathLike[str] | np.ndarray | Mapping[str, Any] | None


def _open(store: BrodenStore | str | os.PathLike[str]) -> BrodenStore:
    return store if isinstance(store, BrodenStore) else open_store(Path(store))


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


def _ranks(distributed: bool, device: str | torch.device) -> tuple[Ranks, torch.device]:
    """This process's ranks and device (under ``distributed``: joins the process group)."""
    if not distributed:
        return LOCAL, resolve_device(device)
    from broden.dissect.distributed import setup

    return setup(device)


def dissect(
    store: BrodenStore | str | os.PathLike[str],
    model: str | nn.Module,
    layers: Sequence[str] | str,
    settings: DissectSettings | None = None,
    *,
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    thresholds: ThresholdSpec = None,
    unit_transform: UnitTransform | Mapping[str, UnitTransform] | None = None,
    transform_key: str | Mapping[str, str] | None = None,
) -> dict[str, DissectionResult]:
    """Dissect ``layers`` of ``model`` against ``store`` with ``settings`` (default:
    :class:`DissectSettings` ()); write ``out/<layer>/``. Returns the results by layer.

    ``model`` is a spec (``dissect.zoo:resnet18``, ``torchvision:resnet18``, a
    TorchScript or .pt2 file; see :mod:`broden.dissect.models`) or an ``nn.Module``, with
    ``weights`` (a state dict file); ``revision`` pins the hub revision of an ``hf:``
    model. ``settings.layout`` may give each layer its own layout
    (:func:`broden.dissect.hooks.parse_layouts`). ``thresholds``: per-unit thresholds to use instead
    of computing them (see :data:`ThresholdSpec`). ``unit_transform`` (one callable, or
    one per layer) maps each batch's (B, U, h, w) activations to the maps that are
    dissected (e.g. a channel rotation); it needs a ``transform_key`` naming it for the
    results cache. A layer whose results in ``out`` were made with the same cache key is
    re-scored from its stored counts instead of recomputed, unless ``settings.force``.

    ``settings.sources``: dissect only the images of these sources (thresholds, counts
    and top images over them alone). ``settings.distributed``: this process is one rank
    of a ``torchrun`` launch (:mod:`broden.dissect.distributed`); every rank returns the
    same results, rank 0 writes them. ``settings.amp``: the model's forward pass under
    autocast (float16 on CUDA, bfloat16 on the CPU), the maps dissected as float32.

    >>> res = dissect("broden.zarr", "dissect.zoo:resnet18", ["layer3", "layer4"],
    ...               out="results")                                   # doctest: +SKIP
    >>> print(res["layer4"].headline())                                # doctest: +SKIP
    """
    t_start = time.perf_counter()
    check_out(out)
    opts = settings or DissectSettings()
    layers = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    if not layers:
        raise DissectError("no layers to dissect; name at least one with --layer")
    st = _open(store)
    ranks, dev = _ranks(opts.distributed, opts.device)
    given = _resolve_thresholds(thresholds, layers)
    transforms = resolve_transforms(unit_transform, transform_key, layers)
    t0 = time.perf_counter()
    loaded = load_model(model, weights, revision)
    norm = model_normalization(opts.normalize, loaded)
    size = opts.input_size or loaded.input_size or st.image_size
    prefix = opts.prefix_tokens if opts.prefix_tokens is not None else loaded.prefix_tokens
    runner = ModelRunner(loaded, InputPrep(norm, size, opts.layout, prefix, opts.amp), dev)
    runner.check_layers(layers)  # before any work
    t_load = time.perf_counter() - t0
    check_layout_layers(opts.layout, layers)
    check_patch_grid(loaded, size)
    source = {
        "spec": loaded.spec,
        "weights": loaded.weights,
        **({"revision": revision} if revision is not None else {}),
        "fingerprint": loaded.fingerprint,
        "input_size": size,
        "normalize": [list(norm.mean), list(norm.std)],
        **({"channels": norm.channels} if norm.channels != "rgb" else {}),
        "layout": opts.layout,
        "prefix_tokens": prefix,
    }
    run = Run(st, opts, Path(out), dev, ranks)
    run.timings["model_load_s"] = round(t_load, 3)
    recorded = {
        "normalize": norm.name,
        "input_size": size,
        "layout": opts.layout,
        "prefix_tokens": prefix,
        "workers": opts.workers,
        "cache_activations": opts.cache_activations,
        "amp": opts.amp,
    }

    results: dict[str, DissectionResult] = {}
    jobs: list[LayerJob] = []
    sources = {la: {**source, "layout": layout_for(opts.layout, la)} for la in layers}
    for la in layers:
        tkey = transforms[la][1] if la in transforms else None
        key = run.key(la, sources[la], given.get(la), tkey)
        directory = layer_dir(run.out, la)
        s = {**recorded, "transform": tkey}
        reused = None if opts.force else run.reuse(la, directory, key, sources[la], s)
        if reused is not None:
            results[la] = reused
        else:
            jobs.append(LayerJob(la, directory, key, given.get(la)))
    if jobs:
        _dissect_model(run, runner, jobs, transforms)
        run.timings["total_s"] = round(time.perf_counter() - t_start, 3)
        for j in jobs:
            tkey = transforms[j.name][1] if j.name in transforms else None
            results[j.name] = run.write(
                j, sources[j.name], {**recorded, "transform": tkey, "passes": run.passes}
            )
    return {la: results[la] for la in layers}


def _dissect_model(
    run: Run, runner: ModelRunner, jobs: list[LayerJob], transforms: dict[str, Keyed]
) -> None:
    """The passes of a model's layers: one forward pass with the activations kept in memory
    when they fit (or ``cache_activations="yes"``), else two."""
    st, dev, settings = run.store, run.device, run.settings
    run.batch_size = runner.batch_size(run.batch_size)
    names = [j.name for j in jobs]
    fns = {la: fn for la, (fn, _) in transforms.items()}

    def maps_of(images: torch.Tensor, forward: Forward, which: list[str]) -> Maps:
        got = forward(images)
        return {la: apply_transform(fns.get(la), got[la], la) for la in which}

    n_local = len(run.local)
    with device_errors(dev, run.batch_size), torch.inference_mode():
        first_image = int(run.images[0])
        probe = st.read_block(first_image, first_image + 1)
        with runner.capture(names) as forward:
            pm = maps_of(torch.from_numpy(probe.images).to(dev), forward, names)
    for j in jobs:
        j.setup(pm[j.name], run.n_images, settings, run.tables, st.label_size)
        j.reading = runner.readings.get(j.name)
    need = [j for j in jobs if j.given is None]
    need_bytes = sum(
        n_local * j.units * j.shape[0] * j.shape[1] * (4 if j.dtype == torch.float32 else 8)
        for j in need
    )
    mode = settings.cache_activations
    fits = need_bytes <= settings.memory_budget
    keep = bool(need) and (mode == "yes" or (mode == "auto" and fits))
    if keep:
        try:
            for j in need:
                j.cache = torch.empty(
                    (n_local, j.units, *j.shape), dtype=j.dtype, pin_memory=dev.type == "cuda"
                )
        except (RuntimeError, MemoryError):
            for j in need:
                j.cache = None
            if mode == "yes":
                raise DissectError(
                    f"cannot keep {need_bytes / 2**30:.1f} GiB of activations in memory; use "
                    "--cache-activations no (two forward passes) or auto"
                ) from None
            keep = False  # auto: fall back to two forward passes
    run.passes = 1 if not need else (1 if keep else 2)

    def first(labels: bool) -> Batches:
        ds = run.batches(images=True, labels=labels)
        with runner.capture(names) as forward:
            for batch in iterate(ds, settings.workers, dev):
                assert batch.images is not None
                yield batch, maps_of(batch.images, forward, names)

    def replay(todo: list[LayerJob]) -> Batches:
        if keep:
            ds = run.batches(images=False, labels=True)
            for batch in iterate(ds, settings.workers, dev):
                maps = {}
                for j in todo:
                    assert j.cache is not None
                    maps[j.name] = j.cache[batch.start : batch.stop].to(dev, non_blocking=True)
                yield batch, maps
            return
        ds = run.batches(images=True, labels=True)
        which = [j.name for j in todo]
        with runner.capture(which) as forward:
            for batch in iterate(ds, settings.workers, dev):
                assert batch.images is not None
                yield batch, maps_of(batch.images, forward, which)

    run.run_passes(jobs, first, replay)
    for j in jobs:
        j.cache = None


def score_activations(
    store: BrodenStore | str | os.PathLike[str],
    activations: Any,
    layer: str | None = None,
    settings: DissectSettings | None = None,
    *,
    out: str | os.PathLike[str],
    thresholds: ThresholdSpec = None,
    unit_transform: UnitTransform | None = None,
    transform_key: str | None = None,
) -> DissectionResult:
    """Dissect precomputed activations: an N×U×h×w array (.npy path, Zarr array path, or an
    array in memory; tokens N×T×D and channels-last arrays are read as in
    :func:`broden.dissect.hooks.to_unit_maps`) whose row i belongs to store image i. The
    layer's name is ``layer`` (default: the file's stem, or ``activations``); ``settings``,
    ``thresholds`` and the unit transform as for :func:`dissect` (the model's input options
    do not apply).

    With ``settings.sources`` only those sources' images are dissected; the activations
    then hold either every store image (row i: image i) or only the selected ones (row j:
    the j-th selected image, in store order). ``settings.distributed``: as for
    :func:`dissect`, each rank reading its own rows.

    >>> r = score_activations("broden.zarr", "conv5.npy", out="results")  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    check_out(out)
    opts = settings or DissectSettings()
    if opts.amp:
        raise DissectError("--amp applies to a model's forward pass, not to --activations")
    acts, path = open_activations(activations)
    name = layer or (path.stem if path is not None else "activations")
    st = _open(store)
    if len(acts.shape) < 2:
        raise DissectError(f"activations of shape {tuple(acts.shape)}: expected N×U×h×w")
    ranks, dev = _ranks(opts.distributed, opts.device)
    given = _resolve_thresholds(thresholds, [name])
    transforms = resolve_transforms(unit_transform, transform_key, [name])
    check_layout_layers(opts.layout, [name])
    layout = layout_for(opts.layout, name)
    source = {
        "activations": str(path.resolve()) if path is not None else "array",
        "fingerprint": activation_fingerprint(acts, path),
        "layout": layout,
        "prefix_tokens": opts.prefix_tokens,
    }
    run = Run(st, opts, Path(out), dev, ranks)
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
    recorded = {
        "layout": opts.layout,
        "prefix_tokens": opts.prefix_tokens,
        "transform": tkey,
        "workers": opts.workers,
    }
    reused = None if opts.force else run.reuse(name, directory, key, source, recorded)
    if reused is not None:
        return reused
    job = LayerJob(name, directory, key, given.get(name))
    transform = transforms[name][0] if name in transforms else None
    rows = ActivationRows(acts, name, layout, opts.prefix_tokens, None if every else run.images)

    def read(indices: np.ndarray) -> dict[str, torch.Tensor]:
        return {name: apply_transform(transform, rows.maps(indices, dev), name)}

    def batches(labels: bool) -> Batches:
        ds = run.batches(images=False, labels=labels)
        for batch in iterate(ds, opts.workers, dev):
            yield batch, read(batch.indices())

    with device_errors(dev, opts.batch_size), torch.inference_mode():
        probe = read(run.images[:1])
    job.setup(probe[name], run.n_images, opts, run.tables, st.label_size)
    job.reading = rows.reading
    run.passes = 1 if job.given is not None else 2
    run.run_passes([job], batches, lambda todo: batches(True))
    run.timings["total_s"] = round(time.perf_counter() - t_start, 3)
    return run.write(job, source, {**recorded, "passes": run.passes})
