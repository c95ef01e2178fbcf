"""The plan of a build: every source checked, its vocabulary read and its samples listed,
before any work; split into tasks, with a fingerprint of the config and the sample lists
(a resumed build must have the same)."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from broden.adapters import Adapter, Prebuilt, SourceError
from broden.adapters.categories import Kind
from broden.adapters.colors import color_vocabulary
from broden.adapters.files import ReadLimits, reading
from broden.config import BuildConfig, make_adapters
from broden.errors import BuildError
from broden.schema import FORMAT_VERSION

COLOR = "color"


def split_of(source: str, source_id: str, splits: dict[str, float]) -> str:
    """Broden's split rule: md5 of ``"<source>/<file name>"`` as a fraction of 2**64,
    compared with the cumulative split fractions (train 0.7, val 0.3 by default)."""
    name = f"{source}/{PurePosixPath(source_id).name}"
    (number,) = struct.unpack(">Q", hashlib.md5(name.encode("utf-8")).digest()[:8])
    frac = number / 2.0**64
    cum = 0.0
    items = list(splits.items())
    for split, share in items[:-1]:
        cum += share
        if frac <= cum:
            return split
    return items[-1][0]


@dataclass
class Source:
    """A configured source, as the workers see it."""

    name: str
    adapter: Adapter
    kinds: dict[str, Kind]  # category -> pixel/image (colors included when on)
    known: dict[str, np.ndarray]  # category -> bool lookup of valid local ids
    limits: ReadLimits = field(default_factory=ReadLimits)  # what its files may be


@dataclass
class Plan:
    config: BuildConfig
    sources: list[Source]
    candidates: list[tuple[int, int]]  # (source index, sample index), in store order
    tasks: list[tuple[int, int]]  # [start, stop) into candidates
    fingerprint: str
    vocabularies: dict[str, dict[str, dict[int, list[str]]]]  # source -> cat -> id -> names
    prebuilt: Prebuilt | None = None  # a merged release whose numbering is kept (legacy)


def make_plan(config: BuildConfig, adapters: list[tuple[str, Adapter]] | None = None) -> Plan:
    """Check every source, read its vocabulary and list all samples (before any work)."""
    if adapters is None:
        adapters = make_adapters(config)
    prebuilt = _check_prebuilt(config, adapters)
    sources: list[Source] = []
    vocabs: dict[str, dict[str, dict[int, list[str]]]] = {}
    candidates: list[tuple[int, int]] = []
    kinds_seen: dict[str, tuple[str, str]] = {}
    id_hash = hashlib.sha256()
    for si, (name, adapter) in enumerate(adapters):
        limits = config.read_limits(adapter.roots())
        with reading(limits):
            vocab = adapter.vocabulary()
        kinds = {c: adapter.kind(c) for c in adapter.categories}
        if config.colors and prebuilt is None:
            vocab = {**vocab, COLOR: color_vocabulary()}
            kinds[COLOR] = "pixel"
        for cat, kind in kinds.items():
            prev = kinds_seen.setdefault(cat, (kind, name))
            if prev[0] != kind:
                raise SourceError(
                    f"category {cat!r} is per-{kind} in source {name!r} but per-{prev[0]} in "
                    f"source {prev[1]!r}; a category has one kind"
                )
        known = {}
        for cat, ids in vocab.items():
            top = max(ids, default=0)
            if top > 65535:
                raise SourceError(f"source {name!r}: {cat} label id {top} exceeds 65535")
            lut = np.zeros(top + 1, bool)
            lut[list(ids)] = True
            known[cat] = lut
        with reading(limits):
            n = len(adapter)
            id_hash.update(name.encode())
            for i in range(n):
                id_hash.update(adapter.source_id(i).encode() + b"\0")
        sources.append(Source(name, adapter, kinds, known, limits))
        vocabs[name] = vocab
        candidates.extend((si, i) for i in range(n))
    if not candidates:
        raise BuildError("the configured sources hold no samples")
    ts = config.task_size
    tasks = [(a, min(a + ts, len(candidates))) for a in range(0, len(candidates), ts)]
    doc = {"format": FORMAT_VERSION, "config": config.fingerprint_doc()}
    fp = hashlib.sha256(json.dumps(doc, sort_keys=True).encode())
    fp.update(id_hash.digest())
    return Plan(config, sources, candidates, tasks, fp.hexdigest()[:20], vocabs, prebuilt)


def _check_prebuilt(config: BuildConfig, adapters: list[tuple[str, Adapter]]) -> Prebuilt | None:
    """A prebuilt release (legacy Broden) keeps its numbering: it must be the only source,
    at its own size, with the colors it already holds."""
    found = [(name, a, a.prebuilt()) for name, a in adapters]
    pre = [(name, a, p) for name, a, p in found if p is not None]
    if not pre:
        return None
    name, adapter, p = pre[0]
    assert p is not None
    if len(adapters) > 1:
        raise SourceError(
            f"source {name!r} ({adapter.name}) is an already merged release whose concept "
            "numbers are kept; it must be the only source of its config"
        )
    if config.image_size != p.image_size:
        raise SourceError(
            f"source {name!r} holds {p.image_size}×{p.image_size} images with "
            f"{p.label_size}×{p.label_size} labels; the config asks for image_size "
            f"{config.image_size}. Set image_size: {p.image_size} (a release is imported at "
            "its own size)"
        )
    if config.label_size != p.label_size:
        raise SourceError(
            f"source {name!r} has {p.label_size}×{p.label_size} labels, not image_size // 2 = "
            f"{config.label_size}"
        )
    if config.colors:
        raise SourceError(
            f"source {name!r} already holds its color labels; set colors: false in the config"
        )
    return p
