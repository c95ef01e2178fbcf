"""The Broden vocabulary merge: from per-source labels to one numbered concept table.

Every (source, category, local id) is a *key* with an image frequency and a pixel
coverage (summed fraction of each image it covers; whole-image labels count 1.0),
counted at source resolution. :func:`unify` then follows Broden's ``joinseg.py``:

1. names are lower-cased, given the category suffix (scene ``-s``, color ``-c``),
   and passed through the synonym tables (:class:`Synonyms`);
2. keys are visited by descending frequency (ties by key) and *claim* every name not
   yet claimed; a key takes the first name it claimed itself;
3. a key whose names were all claimed earlier *merges* into an owner: the owner of
   its single name, or among several the owner with the closest mean coverage per
   image (ties: the more frequent). Merging is by name, so it crosses sources and
   categories (ADE "leg" parts and Pascal-Part "leg" become one concept);
4. frequency and coverage are summed per name; a name is kept if frequency ≥
   ``min_frequency`` and coverage ≥ ``min_coverage``; kept names are numbered 1..C by
   (descending frequency, descending coverage, name). Dropped keys map to 0.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from broden.adapters.categories import category_sort_key
from broden.schema import CategoryStat, Concept, DroppedLabel, PartOfEdge

Key = tuple[str, str, int]  # (source, category, local id)


@dataclass
class KeyStats:
    """Occurrence of one key: images it appears in and summed per-image pixel fraction."""

    frequency: int = 0
    coverage: float = 0.0

    def add(self, other: KeyStats) -> None:
        self.frequency += other.frequency
        self.coverage += other.coverage


class Synonyms:
    """Broden's synonym rule over a list of names.

    If no name is in either table, the list is unchanged. Otherwise: every name's
    preferred names first, then the names themselves; drop every name that a name of
    that list says must never be its alias (the blacklist); drop repeats.
    """

    def __init__(self, preferred: Mapping[str, list[str]], confusing: Mapping[str, set[str]]):
        self.preferred = dict(preferred)
        self.confusing = dict(confusing)

    @classmethod
    @cache
    def broden(cls) -> Synonyms:
        """The tables of Broden's ``synonym.py`` (``data_manifests/synonyms_*.csv``)."""
        pref: dict[str, list[str]] = defaultdict(list)
        conf: dict[str, set[str]] = defaultdict(set)
        pkg = resources.files("broden.data_manifests")
        with pkg.joinpath("synonyms_preferred.csv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                pref[row["name"]].append(row["preferred"])
        with pkg.joinpath("synonyms_confusing.csv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                conf[row["name"]].add(row["never_alias_to"])
        return cls(pref, conf)

    def __call__(self, names: list[str]) -> list[str]:
        if not any(n in self.preferred or n in self.confusing for n in names):
            return names
        full = [p for n in names for p in self.preferred.get(n, [])] + list(names)
        omit = {o for n in full for o in self.confusing.get(n, ())}
        return list(dict.fromkeys(n for n in full if n not in omit))


@dataclass
class Unified:
    """Result of :func:`unify`."""

    concepts: list[Concept]
    assignment: dict[Key, int]  # key -> concept id (0 = dropped or unnamed)
    key_names: dict[Key, str]  # key -> chosen name ('-' = none)
    dropped: list[DroppedLabel] = field(default_factory=list)

    def concept(self, cid: int) -> Concept:
        return self.concepts[cid - 1]


def key_names(
    raw: Iterable[str], category: str, suffixes: Mapping[str, str], synonyms: Synonyms | None
) -> list[str]:
    """A key's candidate names: lower-cased, blanks and '-' removed, suffixed, synonyms."""
    suffix = suffixes.get(category, "")
    names = [n.strip().lower() for n in raw]
    names = [n + suffix for n in names if n and n != "-"]
    return synonyms(names) if synonyms is not None else names


def _claims(
    order: Iterable[Key], names_of: Callable[[Key], list[str]], owner: dict[Any, Any]
) -> Iterator[tuple[Key, list[str], str | None]]:
    """Broden's claiming: visit the keys in ``order``; each claims, in ``owner``, every
    name of its own not claimed yet. Yields (key, its names, the first name it claimed
    itself, or None when all were claimed before)."""
    for key in order:
        names = names_of(key)
        for n in names:
            owner.setdefault(n, key)
        yield key, names, next((n for n in names if owner[n] == key), None)


def _keep_names(
    named: Iterable[tuple[Key, str]],
    present: Mapping[Key, KeyStats],
    min_frequency: int,
    min_coverage: float,
) -> tuple[list[str], list[DroppedLabel], dict[str, KeyStats]]:
    """Totals per name of the (key, name) pairs ('-': no name, ignored); the names that pass
    the thresholds, by (descending frequency, descending coverage, name), and the others."""
    name_stats: dict[str, KeyStats] = defaultdict(KeyStats)
    name_cats: dict[str, set[str]] = defaultdict(set)
    for key, name in named:
        if name != "-":
            name_stats[name].add(present[key])
            name_cats[name].add(key[1])
    kept, dropped = [], []
    for name, s in name_stats.items():
        if s.frequency >= min_frequency and s.coverage >= min_coverage:
            kept.append(name)
        else:
            dropped.append(
                DroppedLabel(
                    name=name,
                    frequency=s.frequency,
                    coverage=s.coverage,
                    categories=sorted(name_cats[name], key=category_sort_key),
                )
            )
    kept.sort(key=lambda n: (-name_stats[n].frequency, -name_stats[n].coverage, n))
    return kept, dropped, name_stats


def _concept_stats(
    assignment: Mapping[Key, int],
    present: Mapping[Key, KeyStats],
    part_of: Mapping[tuple[Key, Key], int] | None,
) -> tuple[dict[int, dict[str, KeyStats]], dict[int, set[str]], dict[int, dict[int, int]]]:
    """Per concept id: statistics per category, sources, and part-of pixels per object id
    of the keys assigned to it."""
    cat_stats: dict[int, dict[str, KeyStats]] = defaultdict(lambda: defaultdict(KeyStats))
    sources: dict[int, set[str]] = defaultdict(set)
    for key, cid in assignment.items():
        if cid:
            cat_stats[cid][key[1]].add(present[key])
            sources[cid].add(key[0])
    edges: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (pk, ok), pixels in (part_of or {}).items():
        p, o = assignment.get(pk, 0), assignment.get(ok, 0)
        if p and o and p != o:
            edges[p][o] += pixels
    return cat_stats, sources, edges


def unify(
    stats: Mapping[Key, KeyStats],
    names_of: Callable[[Key], list[str]],
    min_frequency: int,
    min_coverage: float,
    part_of: Mapping[tuple[Key, Key], int] | None = None,
) -> Unified:
    """Merge keys into numbered concepts by Broden's rules (see the module docstring).

    ``names_of(key)`` gives a key's candidate names, already normalised by
    :func:`key_names`. ``part_of`` maps (part key, parent key) to pixel counts.
    """
    present = {k: s for k, s in stats.items() if s.frequency > 0}
    order = sorted(present, key=lambda k: (-present[k].frequency, k))
    owner: dict[str, Key] = {}  # name -> key that claimed it (claim order kept)
    labname: dict[Key, str] = {}
    for key, names, own in _claims(order, names_of, owner):
        if own is not None:
            labname[key] = own
        elif not names:
            labname[key] = "-"
        elif len(names) == 1:
            labname[key] = labname[owner[names[0]]]
        else:
            s = present[key]
            size = s.coverage / s.frequency
            _, _, other = min(
                (
                    abs(size - present[o].coverage / present[o].frequency),
                    -present[o].frequency,
                    o,
                )
                for o in (owner[n] for n in names)
            )
            labname[key] = labname[other]

    # Phase 3: totals per name, thresholds, numbering.
    kept, dropped, name_stats = _keep_names(labname.items(), present, min_frequency, min_coverage)
    number = {n: i + 1 for i, n in enumerate(kept)}
    assignment = {k: number.get(n, 0) for k, n in labname.items()}

    # Per-concept statistics.
    cat_stats, sources, edges = _concept_stats(assignment, present, part_of)
    syns: dict[int, list[str]] = defaultdict(list)
    for n, key in owner.items():
        cid = assignment.get(key, 0)
        if cid and n != kept[cid - 1]:
            syns[cid].append(n)

    # Primary category: largest coverage; ties go to the category that comes later in
    # Broden's category order (by each category's smallest concept id).
    first_id: dict[str, int] = {}
    for cid in range(1, len(kept) + 1):
        for cat in cat_stats[cid]:
            first_id.setdefault(cat, cid)
    cat_rank = {c: i for i, c in enumerate(sorted(first_id, key=lambda c: (first_id[c], c)))}

    concepts = []
    for cid, name in enumerate(kept, 1):
        per_cat = cat_stats[cid]
        primary = max(per_cat, key=lambda c: (per_cat[c].coverage, cat_rank[c]))
        concepts.append(
            Concept(
                id=cid,
                name=name,
                category=primary,
                categories=[
                    CategoryStat(name=c, frequency=s.frequency, coverage=s.coverage)
                    for c, s in sorted(
                        per_cat.items(), key=lambda cs: (-cs[1].frequency, cat_rank[cs[0]])
                    )
                ],
                frequency=name_stats[name].frequency,
                coverage=name_stats[name].coverage,
                synonyms=syns[cid],
                sources=sorted(sources[cid]),
                part_of=[
                    PartOfEdge(id=o, pixels=px)
                    for o, px in sorted(edges[cid].items(), key=lambda e: (-e[1], e[0]))
                ],
            )
        )
    dropped.sort(key=lambda d: (-d.frequency, d.name))
    return Unified(concepts, assignment, labname, dropped)


def unify_into(
    existing: Sequence[Concept],
    stats: Mapping[Key, KeyStats],
    names_of: Callable[[Key], list[str]],
    min_frequency: int,
    min_coverage: float,
    part_of: Mapping[tuple[Key, Key], int] | None = None,
) -> Unified:
    """Merge new keys into an existing concept table (``broden add``), ids kept.

    The existing concepts' names and synonyms are claimed before any new key, so the
    claiming of :func:`unify` decides the rest: a key with an unclaimed name founds a new
    name; a key whose names are all claimed merges into an owner, an existing concept or
    a new name (among several, the closest mean coverage per image). Existing concepts
    keep their id, name and primary category; their frequency, coverage, per-category
    statistics, sources, synonyms and part-of edges grow by what merged into them. New
    names pass the thresholds on the new keys' totals and are numbered C+1, C+2, ... by
    (descending frequency, descending coverage, name). Dropped keys map to 0.
    """
    n_old = len(existing)
    present = {k: s for k, s in stats.items() if s.frequency > 0}
    order = sorted(present, key=lambda k: (-present[k].frequency, k))
    # owner of each name: an existing concept id (int) or the new key that claimed it
    owner: dict[str, int | Key] = {}
    for c in existing:
        for n in [c.name, *c.synonyms]:
            owner.setdefault(n, c.id)

    def mean_size(o: int | Key) -> tuple[float, int]:
        if isinstance(o, int):
            c = existing[o - 1]
            return c.coverage / max(c.frequency, 1), c.frequency
        return present[o].coverage / present[o].frequency, present[o].frequency

    target: dict[Key, int | str] = {}  # key -> existing id, or its (new) name; '-' = none
    for key, names, own in _claims(order, names_of, owner):
        if own is not None:
            target[key] = own
            continue
        if not names:
            target[key] = "-"
            continue
        candidates = [owner[n] for n in names]
        if len(candidates) > 1:
            size = present[key].coverage / present[key].frequency
            candidates.sort(key=lambda o: (abs(size - mean_size(o)[0]), -mean_size(o)[1], str(o)))
        o = candidates[0]
        target[key] = o if isinstance(o, int) else target[o]

    # new names: totals, thresholds, numbering after the existing ids
    named = [(k, t) for k, t in target.items() if isinstance(t, str)]
    kept, dropped, name_stats = _keep_names(named, present, min_frequency, min_coverage)
    number = {n: n_old + i + 1 for i, n in enumerate(kept)}
    assignment = {k: (t if isinstance(t, int) else number.get(t, 0)) for k, t in target.items()}
    concept_name = {c.id: c.name for c in existing} | {i: n for n, i in number.items()}

    # statistics of every concept that received keys
    cat_stats, sources, edges = _concept_stats(assignment, present, part_of)
    syns: dict[int, list[str]] = defaultdict(list)
    for n, o in owner.items():
        cid = assignment.get(o, 0) if not isinstance(o, int) else 0
        if cid and n != concept_name[cid]:
            syns[cid].append(n)

    def merged_categories(old: list[CategoryStat], new: dict[str, KeyStats]) -> list[CategoryStat]:
        by_name = {c.name: c.model_copy() for c in old}
        for cat, s in new.items():
            c = by_name.setdefault(cat, CategoryStat(name=cat, frequency=0, coverage=0.0))
            c.frequency += s.frequency
            c.coverage += s.coverage
        order = {c.name: i for i, c in enumerate(old)}
        return sorted(
            by_name.values(),
            key=lambda c: (-c.frequency, order.get(c.name, len(order)),
                           category_sort_key(c.name)),
        )  # fmt: skip

    def merged_edges(old: list[PartOfEdge], new: dict[int, int]) -> list[PartOfEdge]:
        total: dict[int, int] = defaultdict(int)
        for e in old:
            total[e.id] += e.pixels
        for o, px in new.items():
            total[o] += px
        return [PartOfEdge(id=o, pixels=px)
                for o, px in sorted(total.items(), key=lambda e: (-e[1], e[0]))]  # fmt: skip

    concepts: list[Concept] = []
    for c in existing:
        if c.id not in cat_stats:
            concepts.append(c)
            continue
        added = cat_stats[c.id]
        concepts.append(
            c.model_copy(
                update={
                    "categories": merged_categories(c.categories, added),
                    "frequency": c.frequency + sum(s.frequency for s in added.values()),
                    "coverage": c.coverage + sum(s.coverage for s in added.values()),
                    "synonyms": list(dict.fromkeys([*c.synonyms, *syns[c.id]])),
                    "sources": sorted(set(c.sources) | sources[c.id]),
                    "part_of": merged_edges(c.part_of, edges[c.id]),
                }
            )
        )
    for cid, name in enumerate(kept, n_old + 1):
        per_cat = cat_stats[cid]
        primary = max(per_cat, key=lambda c: (per_cat[c].coverage, category_sort_key(c)))
        concepts.append(
            Concept(
                id=cid,
                name=name,
                category=primary,
                categories=merged_categories([], per_cat),
                frequency=name_stats[name].frequency,
                coverage=name_stats[name].coverage,
                synonyms=syns[cid],
                sources=sorted(sources[cid]),
                part_of=merged_edges([], edges[cid]),
            )
        )
    key_name = {k: (t if isinstance(t, str) else concept_name[t]) for k, t in target.items()}
    dropped.sort(key=lambda d: (-d.frequency, d.name))
    return Unified(concepts, assignment, key_name, dropped)
