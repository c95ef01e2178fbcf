"""What changed between the concept tables of two stores (``broden concepts --diff``).

Concepts are matched by id, the number every result file uses. For a store and its
extension by ``broden add`` the expected answer is: nothing removed or renamed, some
concepts appended, some existing ones with grown statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from broden.schema import Concept
from broden.store import BrodenStore


@dataclass
class ConceptChange:
    """A concept whose id is in both stores but whose row differs."""

    id: int
    name: str
    changes: dict[str, list[Any]]  # field -> [old, new]


@dataclass
class ConceptDiff:
    old: str
    new: str
    old_images: int
    new_images: int
    added: list[dict[str, Any]] = field(default_factory=list)  # id, name, category, frequency
    removed: list[dict[str, Any]] = field(default_factory=list)
    renamed: list[ConceptChange] = field(default_factory=list)  # name or primary category
    grown: list[ConceptChange] = field(default_factory=list)  # statistics only
    unchanged: int = 0

    @property
    def ids_stable(self) -> bool:
        """True when every old id still names the same concept (same name and category)."""
        return not self.removed and not self.renamed

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ids_stable"] = self.ids_stable
        return doc

    def format(self) -> str:
        lines = [
            f"old: {self.old} ({self.old_images} images)",
            f"new: {self.new} ({self.new_images} images)",
            f"unchanged: {self.unchanged}  statistics grown: {len(self.grown)}  added: "
            f"{len(self.added)}  removed: {len(self.removed)}  renamed: {len(self.renamed)}",
            "old concept ids are "
            + ("stable" if self.ids_stable else "NOT stable: results are not comparable by id"),
        ]
        for c in self.added:
            lines.append(
                f"  + {c['id']:>5}  {c['name']:<28} {c['category']:<10} freq {c['frequency']}"
            )
        for c in self.removed:
            lines.append(f"  - {c['id']:>5}  {c['name']:<28} {c['category']}")
        for ch in self.renamed:
            what = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in ch.changes.items())
            lines.append(f"  ! {ch.id:>5}  {what}")
        for ch in self.grown:
            what = ", ".join(f"{k} {_short(v[0])} -> {_short(v[1])}" for k, v in ch.changes.items())
            lines.append(f"  ~ {ch.id:>5}  {ch.name:<28} {what}")
        return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return f"[{len(v)}]"
    return str(v)


IDENTITY = ("name", "category")
STATISTICS = ("frequency", "coverage", "categories", "sources", "synonyms", "part_of")


def diff_concepts(old: BrodenStore, new: BrodenStore) -> ConceptDiff:
    """Compare the concept tables of ``old`` and ``new`` by id."""
    a = {c.id: c for c in old.concepts}
    b = {c.id: c for c in new.concepts}
    out = ConceptDiff(str(old.path), str(new.path), len(old), len(new))

    def row(c: Concept) -> dict[str, Any]:
        return {"id": c.id, "name": c.name, "category": c.category, "frequency": c.frequency}

    for cid in sorted(set(a) | set(b)):
        if cid not in a:
            out.added.append(row(b[cid]))
        elif cid not in b:
            out.removed.append(row(a[cid]))
        else:
            x, y = a[cid].model_dump(mode="json"), b[cid].model_dump(mode="json")
            ident = {k: [x[k], y[k]] for k in IDENTITY if x[k] != y[k]}
            stats = {k: [x[k], y[k]] for k in STATISTICS if x[k] != y[k]}
            if ident:
                out.renamed.append(ConceptChange(cid, y["name"], {**ident, **stats}))
            elif stats:
                out.grown.append(ConceptChange(cid, y["name"], stats))
            else:
                out.unchanged += 1
    return out
