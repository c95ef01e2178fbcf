"""The store's metadata (format version 1), as pydantic models.

These are the JSON documents in the root group's attributes: ``broden`` (format,
sizes, categories, sources, provenance, completion, build report) and
``concepts`` (the concept table). Reading them back through these models is what
makes a damaged or foreign store fail with a clear message: :func:`parse_store_attrs` and
:func:`parse_concepts` turn any malformed value into one :class:`~broden.errors.StoreError`
naming the store and where in the document the problem is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from broden.errors import StoreError

FORMAT_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CategoryStat(_Model):
    """How often a concept occurs within one category."""

    name: str
    frequency: int = Field(description="images in which the concept has a label of this category")
    coverage: float = Field(description="summed fraction of those images' pixels it covers")
    code: int | None = Field(
        default=None,
        description="the dense per-category code of an imported legacy release (its c_<cat>.csv "
        "row), kept so that an export reproduces the release's order of ties",
    )


class PartOfEdge(_Model):
    """``pixels`` pixels of this part concept lie on instances of concept ``id``."""

    id: int
    pixels: int


class Concept(_Model):
    """One row of the concept table. Ids are 1..C, by descending frequency; 0 = no label."""

    id: int = Field(ge=1)
    name: str
    category: str = Field(description="primary category: the one with the largest coverage")
    categories: list[CategoryStat] = Field(description="every category, by descending frequency")
    frequency: int
    coverage: float
    synonyms: list[str] = []
    sources: list[str] = []
    part_of: list[PartOfEdge] = []


class CategorySpec(_Model):
    """A category of the store: where its labels live and how many layers it has."""

    name: str
    kind: Literal["pixel", "image"]
    layers: int = Field(description="K: label layers (pixel) or label slots per image (image)")


class SourceInfo(_Model):
    """Provenance of one source."""

    name: str
    adapter: str
    categories: list[str]
    images: int = 0
    skipped: int = 0
    title: str | None = None
    version: str | None = None
    license: str | None = None
    citation: str | None = None
    manifest_sha256: str | None = None
    options: dict[str, Any] = {}


class SkippedSample(_Model):
    source: str
    source_id: str
    reason: str


class DroppedLabel(_Model):
    """A merged name under the thresholds: its pixels became 0."""

    name: str
    frequency: int
    coverage: float
    categories: list[str]


class BuildReport(_Model):
    skipped: list[SkippedSample] = []
    dropped: list[DroppedLabel] = []
    seconds: float = 0.0
    workers: int = 1


class Addition(_Model):
    """One ``broden add`` applied to the store: what it added, from which config."""

    fingerprint: str = Field(description="hash of the store before, the config and its samples")
    config_fingerprint: str = Field(description="hash of the config and its sources' samples")
    sources: list[str]
    images: int = Field(description="images appended (rows from the store's previous end)")
    first_image: int = Field(description="row of the first appended image")
    concepts_added: int = Field(description="new concepts appended after the existing ids")
    concepts_extended: int = Field(description="existing concepts that gained labels")
    skipped: int = 0
    config: dict[str, Any]
    created: str


class StoreAttrs(_Model):
    """The ``broden`` attribute of a store's root group."""

    format_version: int = FORMAT_VERSION
    complete: bool = False
    images: int
    image_size: int
    label_size: int
    shard_size: int
    categories: list[CategorySpec]
    sources: list[SourceInfo]
    build_config: dict[str, Any]
    build_fingerprint: str = Field(description="hash of the config and the sources' sample lists")
    package_version: str
    created: str
    build_report: BuildReport = BuildReport()
    additions: list[Addition] = Field(
        default=[], description="the `broden add` runs applied since the build, in order"
    )
    adding: str | None = Field(
        default=None,
        description="fingerprint of an unfinished `broden add` (the store is incomplete until "
        "the same command is run again to the end)",
    )


def _problem(error: ValidationError) -> str:
    """The first problem of a validation error: where, what was expected, what was found."""
    first = error.errors()[0]
    where = ".".join(map(str, first["loc"])) or "(top level)"
    found = repr(first.get("input"))
    found = found if len(found) <= 60 else found[:57] + "..."
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}, found {found}{more}"


def parse_store_attrs(raw: Any, where: object) -> StoreAttrs:
    """The ``broden`` attribute of a store's root group, read back; :class:`StoreError`
    naming ``where`` (the store) if it is missing, of another format version, or malformed."""
    if raw is None:
        raise StoreError(f"{where}: not a Broden store (no 'broden' attribute)")
    if isinstance(raw, dict) and raw.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{where}: store format version {raw.get('format_version')!r}; this broden reads "
            f"version {FORMAT_VERSION}"
        )
    try:
        return StoreAttrs.model_validate(raw)
    except ValidationError as e:
        raise StoreError(
            f"{where}: damaged store metadata ('broden' attribute): {_problem(e)}"
        ) from None


_CONCEPT_TABLE = TypeAdapter(list[Concept])


def parse_concepts(raw: Any, where: object) -> list[Concept]:
    """The ``concepts`` attribute of a store's root group (the concept table), read back;
    :class:`StoreError` naming ``where`` (the store) if it is not a list of concepts."""
    try:
        return _CONCEPT_TABLE.validate_python([] if raw is None else raw)
    except ValidationError as e:
        raise StoreError(
            f"{where}: damaged concept table ('concepts' attribute): {_problem(e)}"
        ) from None
