"""The adapter contract: what every concept source yields to the build.

An adapter reads one public dataset in its own on-disk format and knows nothing
of Zarr or of the merged vocabulary. It declares the categories it supplies and
their kind (``pixel``: a label per pixel; ``image``: whole-image labels), its
local label ids with their names (:meth:`Adapter.vocabulary`), and gives random
access to :class:`SourceSample` records so the build can shard the work.

Errors: :class:`SourceError` for a source that cannot be used at all (missing
folder, wrong layout; raised before any work), :class:`SampleError` for one bad
sample (corrupt image, size mismatch, unknown label id), which the build skips
and lists with its reason.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from broden.adapters.categories import Kind
from broden.adapters.errors import SampleError, SourceError


@dataclass(frozen=True)
class PartOf:
    """``pixels`` pixels of local label ``part`` (category ``part_category``) belong to an
    instance of local label ``parent`` (category ``parent_category``) in one sample."""

    part_category: str
    part: int
    parent_category: str
    parent: int
    pixels: int


@dataclass
class SourceSample:
    """One image of a source with all its labels, at the source's own resolution.

    ``pixel[c]`` is a (K, H, W) integer array of local label ids of category ``c``
    (0 = unlabeled; K > 1 where labels of one category overlap, dominant layer
    first). ``image_labels[c]`` lists whole-image local ids, dominant first.
    """

    source_id: str
    image: np.ndarray
    pixel: dict[str, np.ndarray] = field(default_factory=dict)
    image_labels: dict[str, list[int]] = field(default_factory=dict)
    part_of: list[PartOf] = field(default_factory=list)

    def validate(self) -> None:
        """Raise :class:`SampleError` if arrays disagree in size or type."""
        im = self.image
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise SampleError(f"image must be H×W×3 uint8, got {im.shape} {im.dtype}")
        h, w = im.shape[:2]
        for cat, arr in self.pixel.items():
            if arr.ndim != 3:
                raise SampleError(f"{cat} label map must be K×H×W, got shape {arr.shape}")
            if arr.shape[1:] != (h, w):
                raise SampleError(
                    f"{cat} label map is {arr.shape[2]}×{arr.shape[1]} (W×H) but the image is "
                    f"{w}×{h}"
                )
            if not np.issubdtype(arr.dtype, np.integer):
                raise SampleError(f"{cat} label map has non-integer dtype {arr.dtype}")


@dataclass
class Prebuilt:
    """A release that is already a merged dataset (legacy Broden): its images are
    ``image_size``² and its pixel maps ``label_size``², its label ids are the release's
    concept numbers, and ``concepts`` is its concept table (dicts with the keys of
    ``broden.schema.Concept``: id, name, category, categories [{name, frequency,
    coverage}], frequency, coverage, synonyms). The build keeps these numbers and names
    instead of merging, and refuses a config ``image_size`` other than ``image_size``."""

    image_size: int
    label_size: int
    concepts: list[dict[str, Any]]
    #: source_id → split as the release assigned it (kept instead of Broden's md5 rule)
    splits: dict[str, str] | None = None


class AdapterOptions(BaseModel):
    """Config keys of a source entry, besides ``adapter``, ``name`` and ``categories``.

    Adapters with several folders (``pascal``, ``coco``) subclass this with their own
    fields; most use :class:`RootOptions`. Unknown keys are an error.
    """

    model_config = ConfigDict(extra="forbid")


class RootOptions(AdapterOptions):
    """The options of a source that lives in one folder."""

    root: Path


class Adapter(abc.ABC):
    """Base class of all concept sources. Subclasses set the class attributes and
    implement :meth:`vocabulary`, :meth:`__len__`, :meth:`source_id` and :meth:`load`."""

    #: registry name used in configs (``adapter: ade20k``) and default source name
    name: ClassVar[str]
    #: categories this adapter can supply, with their kind
    kinds: ClassVar[dict[str, Kind]]
    #: the options model validating the config entry
    Options: ClassVar[type[AdapterOptions]] = RootOptions
    #: the manifest file in ``data_manifests/`` (without ``.yaml``), if any
    manifest_name: ClassVar[str | None] = None

    def __init__(self, options: AdapterOptions, categories: Sequence[str] | None = None):
        self.options = options
        self._requested = None if categories is None else tuple(categories)
        if type(self).supplied_kinds is Adapter.supplied_kinds:
            self.categories  # noqa: B018 - fixed kinds: check the request right away

    def supplied_kinds(self) -> dict[str, Kind]:
        """The categories this source supplies, with their kind. Fixed per class
        (:attr:`kinds`) by default; adapters whose categories depend on the config or on
        the data (``coco``, ``folder``, ``broden_legacy``) override this."""
        return dict(self.kinds)

    @cached_property
    def categories(self) -> tuple[str, ...]:
        """The categories taken from this source: all it supplies, or the configured subset
        (in the adapter's order)."""
        kinds = self.supplied_kinds()
        if self._requested is None:
            return tuple(kinds)
        unknown = [c for c in self._requested if c not in kinds]
        if unknown:
            raise SourceError(
                f"adapter {self.name!r} does not supply categories {unknown}; "
                f"{self.supplies_text()} {list(kinds)}"
            )
        return tuple(c for c in kinds if c in self._requested)

    def supplies_text(self) -> str:
        """How an error about unknown categories introduces the supplied ones."""
        return "it supplies"

    def roots(self) -> list[Path]:
        """The folders and files the config gives this source (its path options): every
        file it reads must lie inside one (:mod:`broden.adapters.files`)."""
        found = [getattr(self.options, n) for n in type(self.options).model_fields]
        return [p for p in found if isinstance(p, Path)]

    @classmethod
    def from_config(
        cls, options: dict[str, Any], categories: Sequence[str] | None = None
    ) -> Adapter:
        """Validate a config entry's keys against :attr:`Options` and construct."""
        try:
            opts = cls.Options.model_validate(options)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(entry)'}: {err['msg']}"
                for err in e.errors()
            )
            raise SourceError(f"source {cls.name!r}: invalid config: {problems}") from None
        return cls(opts, categories)

    # -- duties ---------------------------------------------------------------------------

    def check(self) -> None:
        """Verify the source folder against its manifest; raise :class:`SourceError` naming
        what is missing or wrong. The default checks the manifest's expected layout."""
        root = getattr(self.options, "root", None)
        if self.manifest_name is not None and root is not None:
            from broden.adapters.manifest import load_manifest

            load_manifest(self.manifest_name).check_layout(root)

    @abc.abstractmethod
    def vocabulary(self) -> dict[str, dict[int, list[str]]]:
        """For each supplied category, local label id (> 0) → names, preferred first."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abc.abstractmethod
    def source_id(self, index: int) -> str:
        """Stable id of sample ``index`` (its path relative to the source root, or its id)."""

    @abc.abstractmethod
    def load(self, index: int) -> SourceSample:
        """Read sample ``index``; raise :class:`SampleError` if it cannot be read correctly."""

    # -- description ----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Provenance recorded in the store: version, license, citation, manifest checksum."""
        info: dict[str, Any] = {"adapter": self.name, "categories": list(self.categories)}
        if self.manifest_name is not None:
            from broden.adapters.manifest import load_manifest

            m = load_manifest(self.manifest_name)
            info.update(
                title=m.title,
                version=self.release_version(),
                license=m.license,
                citation=m.citation,
                manifest_sha256=m.sha256,
            )
        return info

    def release_version(self) -> str | None:
        """The release this folder holds, when the adapter can tell."""
        return None

    def prebuilt(self) -> Prebuilt | None:
        """For a release that is already a merged dataset (see :class:`Prebuilt`): its sizes
        and concept table. Its samples then carry images at ``image_size``, pixel maps at
        ``label_size`` and concept numbers as label ids. None for ordinary sources."""
        return None

    def kind(self, category: str) -> Kind:
        return self.supplied_kinds()[category]
