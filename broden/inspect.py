"""What ``broden info`` and ``broden concepts`` print: store summaries as plain data.

The dictionaries returned here are the ``--json`` outputs, a contract scripts rely on:

- :func:`store_info`: ``images``, ``image_size``, ``label_size``, ``categories`` (names,
  hierarchy order), ``category_kinds``, ``sources``, ``concepts`` (count per primary
  category), ``complete``, ``format_version``, ``shard_size``, ``skipped``, ``dropped``.
- :func:`concept_records`: per concept ``id``, ``name``, ``category`` (primary),
  ``categories`` (all, with frequency and coverage), ``frequency``, ``coverage``,
  ``part_of`` (``[{"id", "pixels"}]``), ``synonyms``, ``sources``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from broden.store import BrodenStore


def store_info(store: BrodenStore) -> dict[str, Any]:
    """Summary of a store (the ``broden info --json`` document)."""
    a = store.attrs
    counts: dict[str, int] = defaultdict(int)
    for c in store.concepts:
        counts[c.category] += 1
    return {
        "path": str(store.path),
        "format_version": a.format_version,
        "complete": a.complete,
        "images": a.images,
        "image_size": a.image_size,
        "label_size": a.label_size,
        "shard_size": a.shard_size,
        "categories": [c.name for c in a.categories],
        "category_kinds": {c.name: {"kind": c.kind, "layers": c.layers} for c in a.categories},
        "concepts": {c.name: counts.get(c.name, 0) for c in a.categories},
        "sources": [
            {
                "name": s.name,
                "adapter": s.adapter,
                "images": s.images,
                "skipped": s.skipped,
                "categories": s.categories,
                "version": s.version,
                "license": s.license,
                "citation": s.citation,
            }
            for s in a.sources
        ],
        "skipped": [s.model_dump() for s in a.build_report.skipped],
        "dropped": len(a.build_report.dropped),
        "build_seconds": round(a.build_report.seconds, 2),
        "package_version": a.package_version,
        "created": a.created,
    }


def format_info(info: dict[str, Any]) -> str:
    """Human-readable form of :func:`store_info`."""
    lines = [
        f"{info['path']}: broden store v{info['format_version']}, "
        + ("complete" if info["complete"] else "INCOMPLETE (build interrupted)"),
        f"images: {info['images']} at {info['image_size']}×{info['image_size']}, "
        f"labels {info['label_size']}×{info['label_size']}, {info['shard_size']} per shard",
        "sources:",
    ]
    for s in info["sources"]:
        skipped = f", {s['skipped']} skipped" if s["skipped"] else ""
        version = f" {s['version']}" if s["version"] else ""
        lines.append(
            f"  {s['name']}{version} ({s['adapter']}): {s['images']} images{skipped}; "
            f"{', '.join(s['categories'])}"
        )
    lines.append("concepts by category:")
    for name, n in info["concepts"].items():
        k = info["category_kinds"][name]
        lines.append(f"  {name:<9} {n:>5}   ({k['kind']} labels, {k['layers']} layer(s))")
    lines.append(f"  total     {sum(info['concepts'].values()):>5}")
    if info["dropped"]:
        lines.append(f"labels dropped under the thresholds: {info['dropped']}")
    if info["skipped"]:
        lines.append(f"skipped samples: {len(info['skipped'])}")
        for s in info["skipped"][:10]:
            lines.append(f"  - {s['source']}:{s['source_id']}: {s['reason']}")
    return "\n".join(lines)


def concept_records(store: BrodenStore, category: str | None = None) -> list[dict[str, Any]]:
    """The concept table as plain dicts (``broden concepts --json``), optionally one category
    (concepts whose primary category, or any category, is ``category``)."""
    out = []
    for c in store.concepts:
        if category is not None and category not in {x.name for x in c.categories}:
            continue
        out.append(c.model_dump(mode="json"))
    return out


def format_concepts(records: list[dict[str, Any]]) -> str:
    lines = [f"{'id':>5}  {'name':<28} {'category':<9} {'freq':>6} {'coverage':>9}  categories"]
    for r in records:
        cats = ";".join(f"{c['name']}({c['frequency']})" for c in r["categories"])
        lines.append(
            f"{r['id']:>5}  {r['name']:<28} {r['category']:<9} {r['frequency']:>6} "
            f"{r['coverage']:>9.3f}  {cats}"
        )
    return "\n".join(lines)


def format_tree(store: BrodenStore) -> str:
    """The concept hierarchy: categories in level order; parts under the concepts they
    are part of (with pixel counts), and each part's parents."""
    by_id = {c.id: c for c in store.concepts}
    children: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for c in store.concepts:
        for e in c.part_of:
            children[e.id].append((c.id, e.pixels))
    lines = []
    for cat in store.categories:
        members = [c for c in store.concepts if c.category == cat.name]
        lines.append(f"{cat.name} ({cat.kind}, {len(members)} concepts)")
        for c in members:
            extra = ""
            if c.part_of:
                extra = "  part of: " + ", ".join(
                    f"{by_id[e.id].name} ({e.pixels:,} px)" for e in c.part_of
                )
            lines.append(f"  {c.id:>4} {c.name}{extra}")
            kids = sorted(children.get(c.id, []), key=lambda kp: -kp[1])
            for i, (kid, px) in enumerate(kids):
                branch = "└─" if i == len(kids) - 1 else "├─"
                lines.append(f"         {branch} {by_id[kid].name} ({px:,} px)")
    return "\n".join(lines)
