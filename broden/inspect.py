"""What ``broden info`` and ``broden concepts`` print: store summaries as plain data.

The dictionaries returned here are the ``--json`` outputs, a contract scripts rely on:

- :func:`store_info`: ``images``, ``image_size``, ``label_size``, ``categories`` (names,
  hierarchy order), ``category_kinds``, ``sources``, ``concepts`` (count per primary
  category), ``complete``, ``format_version``, ``shard_size``, ``skipped``, ``dropped``,
  ``additions`` (the ``broden add`` runs applied, in order), ``adding`` (the fingerprint of
  an unfinished add, or null) and ``in_progress`` (an unfinished build or add: its staging
  folder and how far it got, or null). :func:`path_info` is the same for any path, also
  one whose build has not created the store yet.
- :func:`concept_records`: per concept ``id``, ``name``, ``category`` (primary),
  ``categories`` (all, with frequency and coverage), ``frequency``, ``coverage``,
  ``part_of`` (``[{"id", "pixels"}]``), ``synonyms``, ``sources``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
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
        "additions": [x.model_dump(mode="json") for x in a.additions],
        "adding": a.adding,
        "in_progress": run_in_progress(Path(store.path)),
    }


def run_in_progress(path: Path) -> dict[str, Any] | None:
    """The unfinished build or add of the store at ``path``, from its staging folder
    (``STORE.build/`` or ``STORE.add/``): which, where, tasks prepared and shards written,
    and the command that finishes it; None when there is none."""
    from broden.build.staging import staging_path as build_staging
    from broden.extend import staging_path as add_staging

    for kind, staging in (("build", build_staging(path)), ("add", add_staging(path))):
        plan = staging / "plan.json"
        if not plan.is_file():
            continue
        try:
            tasks = int(json.loads(plan.read_text()).get("tasks", 0))
        except (OSError, ValueError):
            tasks = 0
        return {
            "kind": kind,
            "staging": str(staging),
            "tasks": tasks,
            "tasks_prepared": len(list((staging / "tasks").glob("*.json"))),
            "shards_written": len(list((staging / "written").glob("*.json"))),
            "resume": f"run the same `broden {kind}` command again to finish it",
        }
    return None


def path_info(path: Path) -> dict[str, Any]:
    """:func:`store_info` of the store at ``path`` (complete or not); for a path whose build
    is still preparing (no store yet, only ``STORE.build/``), what is known of that build.
    :class:`~broden.errors.StoreError` when there is neither."""
    from broden.store import open_store

    if not path.exists():
        running = run_in_progress(path)
        if running is not None:
            return {"path": str(path), "complete": False, "in_progress": running}
    return store_info(open_store(path, require_complete=False))


def format_info(info: dict[str, Any]) -> str:
    """Human-readable form of :func:`store_info`."""
    running = info.get("in_progress")
    if "format_version" not in info:  # a build that has not written the store yet
        assert running is not None
        return (
            f"{info['path']}: not written yet: a build is in progress or was interrupted "
            f"({running['tasks_prepared']} of {running['tasks']} tasks prepared in "
            f"{running['staging']}); {running['resume']}"
        )
    state = "complete"
    if not info["complete"]:
        kind = "add" if info.get("adding") else "build"
        state = f"INCOMPLETE (a {kind} is in progress or was interrupted: run the same "
        state += f"`broden {kind}` command again to finish it)"
    lines = [
        f"{info['path']}: broden store v{info['format_version']}, {state}",
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
    for a in info.get("additions", []):
        lines.append(
            f"added {a['created']}: {a['images']} images of {', '.join(a['sources'])} as rows "
            f"{a['first_image']}-{a['first_image'] + a['images'] - 1}, "
            f"{a['concepts_added']} new concepts, {a['concepts_extended']} extended"
        )
    if running is not None:
        lines.append(
            f"unfinished {running['kind']}: {running['tasks_prepared']} of {running['tasks']} "
            f"tasks prepared, {running['shards_written']} shards written in "
            f"{running['staging']}; {running['resume']}"
        )
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


def format_tree(store: BrodenStore, category: str | None = None) -> str:
    """The concept hierarchy: categories in level order (only ``category``, if given);
    parts under the concepts they are part of (with pixel counts), and each part's
    parents."""
    by_id = {c.id: c for c in store.concepts}
    children: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for c in store.concepts:
        for e in c.part_of:
            children[e.id].append((c.id, e.pixels))
    lines = []
    for cat in store.categories:
        if category is not None and cat.name != category:
            continue
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
