"""What a build records and reports: the store's attributes (provenance of every source,
the build report) and the :class:`BuildSummary` that ``broden build`` prints."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from broden.adapters.categories import category_sort_key
from broden.build.layout import Layout
from broden.build.plan import Plan
from broden.schema import (
    FORMAT_VERSION,
    BuildReport,
    SkippedSample,
    SourceInfo,
    StoreAttrs,
    parse_concepts,
)
from broden.store import CONCEPTS_ATTR, open_group


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("broden")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class BuildSummary:
    store: Path
    images: int
    per_source: dict[str, int]
    skipped: list[SkippedSample]
    concepts: dict[str, int]  # primary category -> count
    dropped: int
    seconds: float
    reused_tasks: int = 0
    up_to_date: bool = False
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [
            f"store: {self.store}"
            + ("  (already complete: nothing to do)" if self.up_to_date else ""),
            f"images: {self.images}  ("
            + ", ".join(f"{s} {n}" for s, n in self.per_source.items())
            + ")",
            "concepts: "
            + ", ".join(f"{c} {n}" for c, n in self.concepts.items())
            + f"  (total {sum(self.concepts.values())})",
            f"dropped labels under the thresholds: {self.dropped}",
            f"skipped samples: {len(self.skipped)}",
        ]
        for s in self.skipped[:20]:
            lines.append(f"  - {s.source}:{s.source_id}: {s.reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see `broden info --json`)")
        if self.reused_tasks:
            lines.append(f"resumed: {self.reused_tasks} finished tasks reused")
        lines.append(f"time: {self.seconds:.1f} s")
        lines.extend(self.notes)
        return "\n".join(lines)


def source_infos(plan: Plan, layout: Layout, report: BuildReport) -> list[SourceInfo]:
    """Provenance of the plan's sources, with the images and skips of ``layout``/``report``."""
    per_source: dict[str, int] = defaultdict(int)
    for m in layout.meta:
        per_source[m["source"]] += 1
    skipped: dict[str, int] = defaultdict(int)
    for s in report.skipped:
        skipped[s.source] += 1
    sources = []
    for src in plan.sources:
        info = src.adapter.describe()
        sources.append(
            SourceInfo(
                name=src.name,
                adapter=src.adapter.name,
                categories=list(src.kinds),
                images=per_source[src.name],
                skipped=skipped[src.name],
                title=info.get("title"),
                version=info.get("version"),
                license=info.get("license"),
                citation=info.get("citation"),
                manifest_sha256=info.get("manifest_sha256"),
                options=src.adapter.options.model_dump(mode="json"),
            )
        )
    return sources


def store_attrs(plan: Plan, layout: Layout, report: BuildReport, complete: bool) -> StoreAttrs:
    return StoreAttrs(
        format_version=FORMAT_VERSION,
        complete=complete,
        images=layout.n,
        image_size=plan.config.image_size,
        label_size=plan.config.label_size,
        shard_size=layout.shard,
        categories=layout.categories,
        sources=source_infos(plan, layout, report),
        build_config=plan.config.model_dump(mode="json"),
        build_fingerprint=plan.fingerprint,
        package_version=package_version(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        build_report=report,
    )


def summary_from_attrs(out: Path, attrs: StoreAttrs, seconds: float) -> BuildSummary:
    g = open_group(out)
    concepts: dict[str, int] = defaultdict(int)
    for c in parse_concepts(g.attrs.get(CONCEPTS_ATTR), out):
        concepts[c.category] += 1
    ordered = dict(sorted(concepts.items(), key=lambda kv: category_sort_key(kv[0])))
    return BuildSummary(
        store=out,
        images=attrs.images,
        per_source={s.name: s.images for s in attrs.sources},
        skipped=attrs.build_report.skipped,
        concepts=ordered,
        dropped=len(attrs.build_report.dropped),
        seconds=seconds,
    )
