"""Source manifests: what each public release looks like on disk.

A manifest (``data_manifests/<name>.yaml``) names a source's official archives
(with sizes and checksums where known), the layout of each release once
unpacked, its expected counts, license and citation, and how to download it.
Adapters check a user's folder against it before any work, and the build copies
its license and citation into the store's provenance.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from broden.adapters.errors import SourceError


class Archive(BaseModel):
    """One downloadable file of a release."""

    model_config = ConfigDict(extra="forbid")

    name: str
    url: str | None = None
    size: int | None = Field(None, description="bytes")
    md5: str | None = None
    sha256: str | None = None


class Release(BaseModel):
    """One version of a source and its unpacked layout (paths relative to the root)."""

    model_config = ConfigDict(extra="forbid")

    version: str
    archives: list[Archive] = []
    markers: list[str] = Field(
        default_factory=list, description="paths whose presence identifies this release"
    )
    expected: list[str] = Field(default_factory=list, description="paths that must exist")
    counts: dict[str, int] = {}
    checksums: dict[str, str | None] = Field(
        default_factory=dict,
        description="sha256 of files inside the release that are verified before use "
        "(null: not known, the file is never trusted)",
    )


class Manifest(BaseModel):
    """A source's manifest."""

    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    homepage: str | None = None
    license: str
    citation: str
    download: str = Field(description="how to obtain the files (shown when a check fails)")
    releases: list[Release]
    sha256: str = ""

    def identify(self, root: Path) -> Release | None:
        """The release whose markers all exist under ``root``, if any."""
        for rel in self.releases:
            if rel.markers and all((root / m).exists() for m in rel.markers):
                return rel
        return None

    def check_layout(self, root: Path, release: Release | None = None) -> Release:
        """Raise :class:`SourceError` unless ``root`` holds one of the known releases."""
        if not root.exists():
            raise SourceError(f"{self.title}: folder {root} does not exist.\n{self.download}")
        if not root.is_dir():
            raise SourceError(f"{self.title}: {root} is not a folder.\n{self.download}")
        rel = release or self.identify(root)
        if rel is None:
            known = "; ".join(f"{r.version}: {', '.join(r.markers)}" for r in self.releases)
            raise SourceError(
                f"{self.title}: {root} does not look like a known release "
                f"(expected one of: {known}).\n{self.download}"
            )
        missing = [p for p in rel.expected if not (root / p).exists()]
        if missing:
            raise SourceError(
                f"{self.title} {rel.version} at {root} is incomplete: missing "
                f"{', '.join(missing)}.\n{self.download}"
            )
        return rel


@cache
def load_manifest(name: str) -> Manifest:
    """Load ``data_manifests/<name>.yaml``."""
    ref = resources.files("broden.data_manifests").joinpath(f"{name}.yaml")
    try:
        raw = ref.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"no manifest named {name!r} in data_manifests/") from None
    data = yaml.safe_load(raw)
    data["sha256"] = hashlib.sha256(raw).hexdigest()
    return Manifest.model_validate(data)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
