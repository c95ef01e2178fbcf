"""Which concepts a dissection scores: all of a store's, or a concept set (categories,
names, ids, sources, concept-set files: :mod:`broden.concept_set`), with its fingerprint.

A subset chooses the columns of the results only. Whether an image "has" a category
(unit-area modes ``original`` and ``lite``) is still judged from all the store's labels,
so a concept's IoU does not depend on which other concepts were selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from broden.concept_set import ConceptSetError, fingerprint, resolve
from broden.dissect.errors import DissectError
from broden.store import BrodenStore


@dataclass(frozen=True)
class ConceptSelection:
    """The scored concepts and the lookup tables the tally needs.

    ``ids``: selected global concept ids, ascending (the column order of every matrix).
    ``categories``: the categories that are the primary category of a selected concept,
    in store (hierarchy) order. ``concept_category``: for each column, its index into
    ``categories``. ``column``: global id → column + 1 (0: not selected, or no label).
    ``store_categories``: every category of the store; ``primary``: global id → index
    into ``store_categories`` (``len(store_categories)`` for id 0).
    """

    ids: np.ndarray
    names: list[str]
    categories: list[str]
    concept_category: np.ndarray
    column: np.ndarray
    store_categories: list[str]
    primary: np.ndarray
    described: str
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def category_columns(self) -> np.ndarray:
        """For each scored category, its index in ``store_categories``."""
        return np.array([self.store_categories.index(c) for c in self.categories], np.int64)


def concept_spec(value: Any) -> tuple[str, ...] | None:
    """The items of ``--concepts`` (a string or a sequence of them), stripped: None (every
    concept) for None or no items at all; a :class:`DissectError` for items that are all
    blank (``--concepts ''``: an empty concept set, which would score nothing)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    names = tuple(str(v).strip() for v in items if str(v).strip())
    if items and not names:
        raise DissectError(
            f"--concepts {' '.join(repr(str(v)) for v in items)}: an empty concept set; name "
            "categories, concepts, id:N, source:NAME or a concept-set file, or leave "
            "--concepts out to score every concept"
        )
    return names or None


def select_concepts(
    store: BrodenStore, spec: Sequence[str] | str | None = None
) -> ConceptSelection:
    """Resolve ``spec`` (see :mod:`broden.concept_set`: category names, concept names,
    ``id:N``, ``source:NAME``, concept-set files; None: all).

    Unknown names fail with a :class:`DissectError` that lists them, and so does an
    empty set (blank items: :func:`concept_spec`).
    """
    concepts = store.concepts
    if not concepts:
        raise DissectError(f"{store.path}: the store has no concepts to score")
    store_cats = [c.name for c in store.categories]
    spec = concept_spec(spec)
    if spec:
        try:
            chosen = resolve(concepts, store_cats, spec)
        except ConceptSetError as e:
            raise DissectError(f"{e} (`broden concepts {store.path}` lists the concepts)") from None
        ids = np.array(chosen, np.int64)
        described = ",".join(str(s) for s in spec)
    else:
        ids = np.array([c.id for c in concepts], np.int64)
        described = "all"
    n_ids = len(concepts) + 1
    column = np.zeros(n_ids, np.int64)
    column[ids] = np.arange(1, len(ids) + 1)
    primary = np.full(n_ids, len(store_cats), np.int64)
    for c in concepts:
        if c.category not in store_cats:
            raise DissectError(
                f"{store.path}: concept {c.id} ({c.name}) has category {c.category!r}, which the "
                "store does not list; run `broden validate`"
            )
        primary[c.id] = store_cats.index(c.category)
    used = {concepts[i - 1].category for i in ids}
    categories = [c for c in store_cats if c in used]
    concept_category = np.array([categories.index(concepts[i - 1].category) for i in ids], np.int64)
    return ConceptSelection(
        ids=ids,
        names=[concepts[i - 1].name for i in ids],
        categories=categories,
        concept_category=concept_category,
        column=column,
        store_categories=store_cats,
        primary=primary,
        described=described,
        fingerprint=fingerprint([concepts[i - 1] for i in ids]),
    )
