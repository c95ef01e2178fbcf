"""Concept sets: which concepts of a store a dissection scores, as a file or a spec.

A spec is a list of items (on the command line: ``--concepts`` repeated or
comma-separated). An item is

- a category name (``texture``): all concepts whose primary category it is;
- ``source:NAME``: all concepts with labels from source NAME (``source:coco``);
- ``id:N``: the concept with id N;
- a concept name (``car``, case-insensitive);
- the path of a concept-set file (below). A name that is both a category and a concept
  means the category.

Concept-set files:

- **CSV** with a header: an ``id`` and/or a ``name`` column (other columns, such as the
  ``category`` and ``frequency`` that ``broden concepts --write-set`` writes, are
  ignored). A row with both must agree with the store: the id must still name that
  concept, so a set made on one store cannot silently select other concepts of another.
- **YAML**: a mapping with any of ``concepts`` (names or ids), ``categories`` and
  ``sources`` (the union is selected), or a plain list of items as above.
- any other file: one item per line, ``#`` starts a comment.

The **fingerprint** of a resolved set hashes its (id, name) pairs, so results made with
the same concepts carry the same fingerprint whatever spec selected them.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from broden.errors import ConfigError
from broden.schema import Concept
from broden.yaml_loader import describe, safe_load


class ConceptSetError(ConfigError):
    """A spec or concept-set file that does not resolve against the store."""


def fingerprint(concepts: Iterable[Concept]) -> str:
    """Hash of the (id, name) pairs of a set of concepts (order-independent)."""
    pairs = sorted((c.id, c.name) for c in concepts)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def _file_items(path: Path) -> list[str | int | tuple[int, str]]:
    """The items of a concept-set file; (id, name) pairs for CSV rows with both."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConceptSetError(f"{path}: cannot read the concept set ({e})") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in reader.fieldnames or []]
        if "id" not in header and "name" not in header:
            raise ConceptSetError(
                f"{path}: a concept-set CSV needs an 'id' and/or a 'name' column, got "
                f"{','.join(header) or 'no header'}"
            )
        out: list[str | int | tuple[int, str]] = []
        for n, row in enumerate(reader, 2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            cid, name = row.get("id", ""), row.get("name", "")
            if cid:
                if not cid.isdigit():
                    raise ConceptSetError(f"{path}:{n}: id {cid!r} is not a positive integer")
                out.append((int(cid), name) if name else int(cid))
            elif name:
                out.append(name)
        return out
    if suffix in (".yaml", ".yml"):
        return _yaml_items(path, text)
    items: list[str | int | tuple[int, str]] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items.append(line)
    return items


#: the keys of a YAML concept set (``store`` and ``fingerprint`` are notes for the reader)
_YAML_KEYS = ("concepts", "categories", "sources", "store", "fingerprint")


def _item(x: Any) -> str | int:
    """A YAML list entry as an item: an id (a plain integer) or a name."""
    return x if isinstance(x, int) and not isinstance(x, bool) else str(x)


def _yaml_items(path: Path, text: str) -> list[str | int | tuple[int, str]]:
    """The items of a YAML concept set: a list of items, or a mapping with lists under
    ``concepts``, ``categories`` and ``sources``."""
    try:
        doc = safe_load(text)
    except yaml.YAMLError as e:
        raise ConceptSetError(f"{path}: not valid YAML ({describe(e)})") from None
    except RecursionError:
        raise ConceptSetError(f"{path}: not valid YAML (nested too deeply)") from None
    if isinstance(doc, list):
        return [_item(x) for x in doc]
    if not isinstance(doc, dict):
        raise ConceptSetError(
            f"{path}: expected a list of concepts or a mapping with concepts, categories, sources"
        )
    unknown = sorted(str(k) for k in doc if k not in _YAML_KEYS)
    if unknown:
        raise ConceptSetError(
            f"{path}: unknown keys {unknown}; use concepts, categories and sources"
        )
    lists: dict[str, list[Any]] = {}
    for key in ("concepts", "categories", "sources"):
        value = doc.get(key)
        if value is not None and not isinstance(value, list):
            raise ConceptSetError(
                f"{path}: {key}: expected a list, got a {type(value).__name__} ({value!r:.40})"
            )
        lists[key] = value or []
    items: list[str | int | tuple[int, str]] = [_item(x) for x in lists["concepts"]]
    items += [f"category:{c}" for c in lists["categories"]]
    items += [f"source:{s}" for s in lists["sources"]]
    return items


def _is_file(path: Path) -> bool:
    """Whether an item names a file (a name too long for a path is a concept name)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _items(spec: Sequence[str]) -> list[tuple[str | int | tuple[int, str], str]]:
    """(item, where it came from) for every item of ``spec``, files expanded."""
    out: list[tuple[str | int | tuple[int, str], str]] = []
    for entry in spec:
        for part in str(entry).split(","):
            part = part.strip()
            if not part:
                continue
            path = Path(part)
            if _is_file(path):
                out += [(item, str(path)) for item in _file_items(path)]
            else:
                out.append((part, "--concepts"))
    return out


def resolve(
    concepts: Sequence[Concept], categories: Sequence[str], spec: Sequence[str]
) -> list[int]:
    """The ids (ascending) that ``spec`` selects from a store's concept table.

    Unknown names, ids, categories or sources fail with one :class:`ConceptSetError`
    listing them (with close matches)."""
    by_name = {c.name.lower(): c for c in concepts}
    by_id = {c.id: c for c in concepts}
    cats = {c.lower(): c for c in categories}
    sources = sorted({s for c in concepts for s in c.sources})
    chosen: set[int] = set()
    unknown: list[str] = []
    for item, origin in _items(spec):
        where = "" if origin == "--concepts" else f" (in {origin})"
        if isinstance(item, tuple):
            cid, name = item
            c = by_id.get(cid)
            if c is None or c.name.lower() != name.lower():
                now = f"names {c.name!r}" if c is not None else "does not exist"
                raise ConceptSetError(
                    f"{origin}: concept {cid} is {name!r} in the set but id {cid} {now} in this "
                    "store; the set was made on another store"
                )
            chosen.add(cid)
            continue
        if isinstance(item, int) or (isinstance(item, str) and item.startswith("id:")):
            text = item if isinstance(item, int) else item[3:]
            try:
                cid = int(text)
            except ValueError:
                unknown.append(f"{item!r}{where}")
                continue
            if cid not in by_id:
                unknown.append(f"id {cid}{where}")
            else:
                chosen.add(cid)
            continue
        key = item.lower()
        if key.startswith("source:"):
            src = item.split(":", 1)[1].strip()
            hits = {c.id for c in concepts if src in c.sources}
            if not hits:
                unknown.append(f"source {src!r}{where} (the sources are {sources})")
            chosen |= hits
        elif key.startswith("category:") or key in cats:
            cat = cats.get(key.split(":", 1)[1] if key.startswith("category:") else key)
            if cat is None:
                unknown.append(f"category {item.split(':', 1)[1]!r}{where}")
                continue
            chosen |= {c.id for c in concepts if c.category == cat}
        elif key in by_name:
            chosen.add(by_name[key].id)
        else:
            close = difflib.get_close_matches(key, list(by_name) + list(cats), n=3, cutoff=0.6)
            unknown.append(
                f"{item!r}{where}" + (f" (did you mean {', '.join(close)}?)" if close else "")
            )
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ConceptSetError(
            f"unknown concepts or categories: {', '.join(unknown[:10])}{more}; the store's "
            f"categories are {list(categories)}"
        )
    if not chosen:
        raise ConceptSetError(f"the concept selection {list(spec)} holds no concepts")
    return sorted(chosen)


def write_concept_set(path: str | Path, concepts: Sequence[Concept], store: str = "") -> Path:
    """Write ``concepts`` as a concept-set file and return its path: CSV
    (``id,name,category,frequency``; its rows pin id and name together) or, for a
    ``.yaml``/``.yml`` path, YAML with the concepts by name (plus, for the reader, the
    store it was made on and the set's fingerprint)."""
    path = Path(path)
    rows = sorted(concepts, key=lambda c: c.id)
    if path.suffix.lower() in (".yaml", ".yml"):
        doc: dict[str, Any] = {
            "store": store,
            "fingerprint": fingerprint(rows),
            "concepts": [c.name for c in rows],
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), "utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "category", "frequency"])
        for c in rows:
            w.writerow([c.id, c.name, c.category, c.frequency])
    return path
