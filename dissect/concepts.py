"""Which concepts a dissection scores: all of a store's, or a subset named by category,
by concept name, or in a file with one name per line.

A subset chooses the columns of the results only. Whether an image "has" a category
(unit-area modes ``original`` and ``lite``) is still judged from all the store's labels,
so a concept's IoU does not depend on which other concepts were selected.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from broden.store import BrodenStore
from dissect.errors import DissectError


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

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def category_columns(self) -> np.ndarray:
        """For each scored category, its index in ``store_categories``."""
        return np.array([self.store_categories.index(c) for c in self.categories], np.int64)


def _expand(items: Iterable[str]) -> list[str]:
    names: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            path = Path(part)
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        names.append(line)
            else:
                names.append(part)
    return names


def select_concepts(
    store: BrodenStore, spec: Sequence[str] | str | None = None
) -> ConceptSelection:
    """Resolve ``spec`` (category names, concept names, files of names; None: all).

    A name that is both a category and a concept means the category. Names match
    case-insensitively. Unknown names fail with a :class:`DissectError` that lists them.
    """
    concepts = store.concepts
    if not concepts:
        raise DissectError(f"{store.path}: the store has no concepts to score")
    store_cats = [c.name for c in store.categories]
    by_name = {c.name.lower(): c.id for c in concepts}
    cats_lower = {c.lower(): c for c in store_cats}
    if isinstance(spec, str):
        spec = [spec]
    if spec:
        names = _expand(spec)
        chosen: set[int] = set()
        unknown: list[str] = []
        for name in names:
            key = name.lower()
            if key in cats_lower:
                cat = cats_lower[key]
                chosen.update(c.id for c in concepts if c.category == cat)
            elif key in by_name:
                chosen.add(by_name[key])
            else:
                unknown.append(name)
        if unknown:
            hints = []
            for name in unknown[:10]:
                close = difflib.get_close_matches(
                    name.lower(), list(by_name) + list(cats_lower), n=3, cutoff=0.6
                )
                hints.append(
                    f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                )
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise DissectError(
                f"unknown concepts or categories: {', '.join(hints)}{more}; "
                f"the store's categories are {store_cats} (`broden concepts {store.path}` "
                "lists the concepts)"
            )
        if not chosen:
            raise DissectError(f"the concept selection {list(spec)} holds no concepts")
        ids = np.array(sorted(chosen), np.int64)
        described = ",".join(sorted(n.lower() for n in names))
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
    )
