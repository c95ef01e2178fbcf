"""Build configuration: the pydantic models behind a ``broden build`` config file.

A config is YAML or TOML with the same keys::

    image_size: 224            # label maps are image_size // 2
    min_frequency: 10          # keep a name seen in at least this many images ...
    min_coverage: 0.5          # ... covering at least this many image-equivalents of pixels
    colors: true               # the 11 color names on every pixel of every image
    sources:
      - adapter: ade20k
        root: /data/ADE20K_2021_17_01
        categories: [object, part, scene]   # optional: default is all the adapter supplies
      - adapter: dtd
        root: /data/dtd

Paths in a source entry may use environment variables (``$BRODEN_DATA/dtd``) and ``~``;
relative paths are resolved against the config file's folder.
Field descriptions here are the reference documentation (``broden config-schema``
prints the JSON Schema).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broden.adapters import Adapter, SourceError, get_adapter_class
from broden.adapters.files import DEFAULT_MAX_IMAGE_PIXELS, ReadLimits
from broden.errors import ConfigError
from broden.yaml_loader import describe, safe_load


class SourceConfig(BaseModel):
    """One source: an adapter, its folder(s), and the categories to take from it."""

    model_config = ConfigDict(extra="allow")

    adapter: str = Field(description="registered adapter name (see `broden adapters`)")
    name: str | None = Field(
        None,
        description="source name recorded per image (meta/source); default: the adapter name",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    categories: list[str] | None = Field(
        None, description="categories to take; default: all the adapter supplies"
    )

    @property
    def source_name(self) -> str:
        return self.name or self.adapter

    def adapter_options(self) -> dict[str, Any]:
        """The adapter-specific keys (``root``, ``images``, ...)."""
        return dict(self.model_extra or {})

    def make_adapter(self) -> Adapter:
        """Construct the adapter, validating its keys against the adapter's options model."""
        cls = get_adapter_class(self.adapter)
        adapter = cls.from_config(self.adapter_options(), self.categories)
        return adapter


class BuildConfig(BaseModel):
    """Everything that determines a store's content."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(224, ge=8, le=4096, description="images are resized to S×S")
    min_frequency: int = Field(
        10, ge=0, description="keep a concept name seen in at least this many images ..."
    )
    min_coverage: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="... and covering at least this many image-equivalents of pixels",
    )
    colors: bool = Field(True, description="label every pixel of every image with its color name")
    suffixes: dict[str, str] = Field(
        default_factory=lambda: {"scene": "-s", "color": "-c"},
        description="suffix appended to the names of a category (Broden: scene -s, color -c)",
    )
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.7, "val": 0.3},
        description="split fractions, assigned by the md5 hash of source/filename (Broden's rule)",
    )
    synonyms: bool = Field(True, description="apply Broden's synonym and blacklist tables")
    shard_size: int = Field(256, ge=1, description="images per shard of the store's arrays")
    task_size: int = Field(
        32, ge=1, description="samples per parallel build task (the unit of resumption)"
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="skip (listed) an image whose header says it has more pixels, before "
        "decoding it (default: Pillow's decompression-bomb limit)",
    )
    allow_outside_links: bool = Field(
        False,
        description="read files that resolve (through symbolic links or `..` in annotation "
        "paths) outside the source's configured folders",
    )
    sources: list[SourceConfig] = Field(min_length=1)

    def read_limits(self, roots: list[Path]) -> ReadLimits:
        """What a source with these folders may read (:mod:`broden.adapters.files`)."""
        return ReadLimits.for_roots(roots, self.max_image_pixels, self.allow_outside_links)

    def fingerprint_doc(self) -> dict[str, Any]:
        """The config as the plan's fingerprint reads it: the read limits only when they
        are not the defaults (a store built before they existed stays up to date)."""
        doc = self.model_dump(mode="json")
        for key in ("max_image_pixels", "allow_outside_links"):
            if doc[key] == type(self).model_fields[key].default:
                del doc[key]
        return doc

    @property
    def label_size(self) -> int:
        return self.image_size // 2

    @field_validator("splits")
    @classmethod
    def _splits_sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        fractions = list(v.values())
        finite = all(math.isfinite(f) for f in fractions)
        if not finite or not v or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {v}")
        return v

    @model_validator(mode="after")
    def _unique_source_names(self) -> BuildConfig:
        names = [s.source_name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"source names {dup} are used twice; give the sources distinct `name:` keys"
            )
        return self


def _path_fields(adapter_name: str) -> set[str]:
    """Option names the adapter types as paths (resolved against the config's folder)."""
    try:
        cls = get_adapter_class(adapter_name)
    except SourceError:
        return set()  # reported when the adapter is constructed
    return {name for name, f in cls.Options.model_fields.items() if "Path" in str(f.annotation)}


def _resolve_paths(entry: dict[str, Any], base: Path, origin: str) -> dict[str, Any]:
    """Expand ``$VARS`` and ``~`` in an entry's path options; relative paths are taken
    from ``base`` (the config file's folder)."""
    out = dict(entry)
    for key in _path_fields(str(entry.get("adapter", ""))):
        value = entry.get(key)
        if isinstance(value, str):
            expanded = os.path.expandvars(value)
            unset = re.findall(r"\$\{?(\w+)", expanded)
            if unset:
                raise ConfigError(
                    f"{origin}: source {entry.get('adapter')!r}, {key}: environment variable "
                    f"{unset[0]} is not set (used in {value!r})"
                )
            p = Path(expanded).expanduser()
            out[key] = str(p if p.is_absolute() else (base / p))
    return out


#: the problems of an invalid config listed (the first ones: they may be thousands)
_MAX_PROBLEMS = 10


def parse_config(
    data: dict[str, Any], base: Path | None = None, origin: str = "config"
) -> BuildConfig:
    """Validate a config mapping; relative source paths resolve against ``base``.

    :class:`ConfigError` naming ``origin`` for anything that is not a valid config: an
    empty document, a top level that is not a mapping, a key given no value, a value of
    the wrong type or out of range."""
    if data is None:
        raise ConfigError(
            f"{origin}: the config is empty; it needs at least a `sources:` list (see "
            "`broden config-schema`)"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin}: expected a mapping of keys (image_size, sources, ...) at the top "
            f"level, got a {type(data).__name__}"
        )
    empty = [str(k) for k, v in data.items() if v is None]
    if empty:
        key = "sources" if "sources" in empty else (empty[0] or "''")
        fix = "list at least one source" if key == "sources" else "give one or remove the key"
        raise ConfigError(
            f"{origin}: {key}: no value given (`{key}:` with nothing after it); {fix}"
        )
    if base is not None and isinstance(data.get("sources"), list):
        data = dict(data)
        data["sources"] = [
            _resolve_paths(s, base, origin) if isinstance(s, dict) else s for s in data["sources"]
        ]
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in errors[:_MAX_PROBLEMS]
        ]
        if len(errors) > _MAX_PROBLEMS:
            lines.append(f"... and {len(errors) - _MAX_PROBLEMS} more")
        problems = lines[0] if len(lines) == 1 else "".join(f"\n  {x}" for x in lines)
        raise ConfigError(f"{origin}: invalid build config: {problems}") from None


def load_config(path: str | os.PathLike[str]) -> BuildConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) build config.

    >>> cfg = load_config("configs/broden1.yaml")                  # doctest: +SKIP
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder, not a YAML or TOML file") from None
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL in the name
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"config file {path}: cannot read it: {reason}") from None
    try:
        data = tomllib.loads(text.decode("utf-8")) if path.suffix == ".toml" else safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: cannot parse: {describe(e)}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: cannot parse: nested too deeply") from None
    return parse_config(data, base=path.resolve().parent, origin=str(path))


def make_adapters(config: BuildConfig) -> list[tuple[str, Adapter]]:
    """(source name, adapter) for every source, each checked against its manifest.

    Raises :class:`adapters.SourceError` naming the first source that is unusable.
    """
    out = []
    for src in config.sources:
        try:
            adapter = src.make_adapter()
            adapter.check()
        except SourceError as e:
            raise SourceError(f"source {src.source_name!r}: {e}") from None
        out.append((src.source_name, adapter))
    return out


#: configs installed with the package: name → (package, file)
BUNDLED = {
    "sample": ("broden.samples", "broden-sample.yaml"),
    "broden1": ("broden.configs", "broden1.yaml"),
}


def bundled_config_path(name: str) -> Path:
    """The file of a bundled config: ``sample`` (the sample sources, built by ``broden build``
    with no config) or ``broden1`` (Broden's five sources under ``$BRODEN_DATA``)."""
    from importlib import resources

    if name not in BUNDLED:
        raise ConfigError(f"no bundled config {name!r}; the bundled ones are {sorted(BUNDLED)}")
    package, file = BUNDLED[name]
    path = Path(str(resources.files(package).joinpath(file)))
    if not path.is_file():
        raise ConfigError(f"the bundled config {name!r} ({path}) is missing from the installation")
    return path


def sample_config_path() -> Path:
    """The bundled sample config (installed with the package, with its sample sources)."""
    return bundled_config_path("sample")


def resolve_config(spec: str | os.PathLike[str]) -> Path:
    """A config file by path, or by the name of a bundled config when no such file exists
    (``broden build broden1``)."""
    path = Path(spec)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long: load_config says why it cannot be read
        return path
    if not exists and str(spec) in BUNDLED:
        return bundled_config_path(str(spec))
    if not exists:
        names = ", ".join(sorted(BUNDLED))
        blocker = next((p for p in path.parents if p.exists()), None)
        why = f": {blocker} is a file, not a folder" if blocker and not blocker.is_dir() else ""
        raise ConfigError(f"config file {path} does not exist{why} (bundled configs: {names})")
    return path
