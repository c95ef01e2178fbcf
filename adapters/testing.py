"""The adapter contract as a test class: the baseline every adapter's tests inherit.

:class:`AdapterContract` is a pytest test class (plain ``test_*`` methods) holding the
checks every source adapter must pass, whatever its format: the class declares a
registered ``name``, an ``Options`` model and its kinds; its module docstring draws the
folder tree it reads and names the release; its manifest loads; ``check()`` passes on the
fixture; the vocabulary covers its categories; ``source_id`` is unique; and a few loaded
samples are valid, carry the id they were asked for and hold only declared categories
and vocabulary ids. An adapter's test module subclasses it with its fixture::

    from broden.adapters import Adapter
    from broden.adapters.dtd import DTD
    from broden.adapters.testing import AdapterContract
    from tests.conftest import SAMPLES


    class TestDTDContract(AdapterContract):
        expected_len = 24            # optional: the fixture's size
        manifest_required = True     # optional: a public release must have a manifest

        def make_adapter(self) -> Adapter:
            return DTD.from_config({"root": SAMPLES / "dtd"})

The contract calls ``check()`` itself before reading data, as the build does. The
parameters of ``make_adapter``, if any, are pytest fixtures requested by name, so a
fixture built in a temporary folder is used as in any test; the adapter (and the
samples loaded from it) is made once per class and fixture values, so with a
module-scoped fixture the data is built, checked and read once for all the checks::

    class TestPascalContract(AdapterContract):
        def make_adapter(self, context_dir: Path) -> Adapter:  # a fixture of the module
            return Pascal.from_config({"images": IMAGES, "context": context_dir, ...})

Optional class attributes tune the checks: :attr:`~AdapterContract.expected_len`,
:attr:`~AdapterContract.samples_checked`, :attr:`~AdapterContract.manifest_required`,
:attr:`~AdapterContract.draws_tree`. Each failure names the adapter class and what is
wrong. This module needs no pytest at import (the library does not depend on it); pytest
is imported only to skip a check that does not apply.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import numpy as np

from broden.adapters import available_adapters, get_adapter_class
from broden.adapters.base import Adapter, AdapterOptions, SourceSample
from broden.adapters.categories import KINDS
from broden.adapters.errors import BrodenError
from broden.adapters.manifest import Manifest, load_manifest

if TYPE_CHECKING:
    import pytest

__all__ = ["AdapterContract", "draws_folder_tree", "release_names"]

#: characters of a drawn tree (``tree``'s output)
_TREE_CHARS = ("├", "└")
#: a whitespace-separated token naming a folder: ``images/``, ``ADE20K_2021_17_01/``
_FOLDER = re.compile(r"(?:^|\s)\S*\w\S*/(?=\s|$)")
#: a token naming an entry: a file with an extension (``index.csv``, ``<id>.jpg``) or a folder
_ENTRY = re.compile(r"\S*\w\.[A-Za-z0-9]{1,5}(?=[\s,;:)]|$)|\S+/(?=\s|$)")


def draws_folder_tree(doc: str | None) -> bool:
    """Whether a docstring draws a folder tree: ``├``/``└`` characters, or an indented
    line naming a folder (a token ending in ``/``) followed by a more indented line naming
    a file (``name.ext``) or a folder, as in::

        dtd/
          images/<class>/<class>_NNNN.jpg
    """
    if not doc:
        return False
    if any(c in doc for c in _TREE_CHARS):
        return True
    lines = [line for line in doc.expandtabs().splitlines() if line.strip()]
    for line, below in zip(lines, lines[1:], strict=False):
        indent = len(line) - len(line.lstrip())
        deeper = len(below) - len(below.lstrip()) > indent
        if indent and deeper and _FOLDER.search(line) and _ENTRY.search(below):
            return True
    return False


def release_names(manifest: Manifest) -> list[str]:
    """The names a docstring may use for a manifest's releases: each release's version
    and its archives' file names."""
    names = [r.version for r in manifest.releases]
    names += [a.name.split()[0] for r in manifest.releases for a in r.archives if a.name]
    return [n for n in names if n]


class AdapterContract:
    """The tests every adapter passes. Subclass it in the adapter's test module as
    ``Test<Name>Contract`` and override :meth:`make_adapter`."""

    #: the fixture's number of samples, when the subclass wants it checked
    expected_len: ClassVar[int | None] = None
    #: how many samples are loaded and checked: the first ones, and the last one too
    samples_checked: ClassVar[int] = 3
    #: how many leading ``source_id`` values must be distinct strings (all when fewer)
    ids_checked: ClassVar[int] = 1000
    #: the adapter must name a manifest in ``data_manifests/`` (a public release)
    manifest_required: ClassVar[bool] = False
    #: the adapter's module docstring must draw the folder tree it reads (False only for
    #: a source that reads no files, such as a synthetic one)
    draws_tree: ClassVar[bool] = True

    # -- the subclass's part ----------------------------------------------------------------

    def make_adapter(self) -> Adapter:
        """The adapter under test, built on the fixture. Its parameters are pytest fixtures,
        requested by name; it is called again only when their values change."""
        raise NotImplementedError(f"{type(self).__name__} must override make_adapter()")

    def sample_indices(self, n: int) -> list[int]:
        """The samples loaded: the first :attr:`samples_checked` ones and the last one."""
        first = list(range(min(n, self.samples_checked)))
        return first + ([n - 1] if n > len(first) else [])

    # -- helpers ----------------------------------------------------------------------------

    def adapter(self, request: pytest.FixtureRequest, checked: bool = True) -> Adapter:
        """The adapter under test: :meth:`make_adapter` with its fixtures resolved, after
        ``check()`` unless ``checked`` is False (the build checks before reading anything).

        It is made once per test class and fixture values: the tests of a class share it
        (and its loaded samples) while :meth:`make_adapter`'s fixtures are the same objects,
        so a module-scoped fixture is built, checked and loaded once."""
        params = inspect.signature(self.make_adapter).parameters
        values = tuple(request.getfixturevalue(name) for name in params)
        cached = _cache(type(self))
        entry = cached.get("entry")
        if (
            entry is None
            or len(entry.values) != len(values)
            or any(a is not b for a, b in zip(entry.values, values, strict=True))
        ):
            adapter = self.make_adapter(**dict(zip(params, values, strict=True)))
            assert isinstance(adapter, Adapter), (
                f"{type(self).__name__}.make_adapter() returned {type(adapter).__name__}, "
                "not an Adapter"
            )
            entry = cached["entry"] = _Made(values, adapter)
        if checked:
            if entry.check_error is None and not entry.checked:
                try:
                    entry.adapter.check()
                    entry.checked = True
                except BrodenError as e:
                    entry.check_error = f"{type(e).__name__}: {e}"
            assert entry.check_error is None, (
                f"{who(entry.adapter)}: check() fails on the fixture: {entry.check_error}"
            )
        return entry.adapter

    def samples(self, adapter: Adapter) -> list[tuple[int, SourceSample]]:
        """(index, sample) for :meth:`sample_indices`, each a :class:`SourceSample`; loaded
        once per adapter (see :meth:`adapter`)."""
        entry = _cache(type(self)).get("entry")
        if entry is not None and entry.adapter is adapter and entry.samples is not None:
            return entry.samples
        out = []
        for i in self.sample_indices(len(adapter)):
            try:
                sample = adapter.load(i)
            except BrodenError as e:
                raise AssertionError(f"{who(adapter)}: load({i}) fails: {e}") from e
            assert isinstance(sample, SourceSample), (
                f"{who(adapter)}: load({i}) returned {type(sample).__name__}, not a SourceSample"
            )
            out.append((i, sample))
        assert out, f"{who(adapter)}: no sample was loaded"
        if entry is not None and entry.adapter is adapter:
            entry.samples = out
        return out

    # -- the class --------------------------------------------------------------------------

    def test_declares_a_registered_name_and_options(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request, checked=False)
        cls = type(adapter)
        name = getattr(cls, "name", None)
        assert isinstance(name, str) and name and not re.search(r"\s", name), (
            f"{who(adapter)}: the class must declare `name`, a non-empty str without spaces "
            f"(got {name!r})"
        )
        if name in available_adapters():
            registered = get_adapter_class(name)
            assert registered is cls, (
                f"{who(adapter)}: the registry's adapter {name!r} is "
                f"{registered.__module__}.{registered.__qualname__}, not this class"
            )
        options = getattr(cls, "Options", None)
        assert isinstance(options, type) and issubclass(options, AdapterOptions), (
            f"{who(adapter)}: `Options` must be an AdapterOptions subclass (got {options!r})"
        )
        assert isinstance(adapter.options, options), (
            f"{who(adapter)}: its options are a {type(adapter.options).__name__}, "
            f"not its Options {options.__name__}"
        )

    def test_declares_its_kinds_and_categories(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request)
        cls = type(adapter)
        declared = getattr(cls, "kinds", None)
        assert isinstance(declared, Mapping), (
            f"{who(adapter)}: the class must declare `kinds`, a dict category → kind "
            f"(got {declared!r})"
        )
        fixed = cls.supplied_kinds is Adapter.supplied_kinds
        assert declared or not fixed, (
            f"{who(adapter)}: `kinds` is empty and supplied_kinds() is not overridden"
        )
        for source, kinds in (("kinds", declared), ("supplied_kinds()", adapter.supplied_kinds())):
            assert isinstance(kinds, Mapping), f"{who(adapter)}: {source} is not a dict"
            wrong = {c: k for c, k in kinds.items() if not isinstance(c, str) or k not in KINDS}
            assert not wrong, f"{who(adapter)}: {source} has kinds outside {KINDS}: {wrong}"
        assert adapter.supplied_kinds(), f"{who(adapter)}: supplied_kinds() is empty"
        supplied = list(adapter.supplied_kinds())
        taken = list(adapter.categories)
        assert taken, f"{who(adapter)}: `categories` is empty"
        assert taken == [c for c in supplied if c in taken], (
            f"{who(adapter)}: `categories` {taken} must be a subset of supplied_kinds() "
            f"{supplied}, in that order"
        )

    # -- its documentation and provenance ---------------------------------------------------

    def test_module_docstring_draws_the_folder_tree(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request, checked=False)
        if not self.draws_tree:
            _skip(f"{who(adapter)} reads no files (draws_tree = False)")
        doc = module_doc(adapter)
        assert draws_folder_tree(doc), (
            f"{who(adapter)}: the docstring of module {type(adapter).__module__} must draw "
            "the folder tree the adapter reads (an indented listing: a `folder/` line, then "
            "its files indented below it)"
        )

    def test_module_docstring_names_its_release(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request, checked=False)
        if adapter.manifest_name is None:
            _skip(f"{who(adapter)} has no manifest")
        manifest = load_manifest(adapter.manifest_name)
        names = release_names(manifest)
        assert any(n in module_doc(adapter) for n in names), (
            f"{who(adapter)}: the docstring of module {type(adapter).__module__} must name "
            f"the release it was written against (one of {names})"
        )

    def test_manifest_loads_with_license_and_citation(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request, checked=False)
        if adapter.manifest_name is None:
            assert not self.manifest_required, f"{who(adapter)}: `manifest_name` is not set"
            _skip(f"{who(adapter)} has no manifest")
        try:
            manifest = load_manifest(adapter.manifest_name)
        except BrodenError as e:
            raise AssertionError(f"{who(adapter)}: its manifest does not load: {e}") from e
        assert manifest.name == adapter.manifest_name, (
            f"{who(adapter)}: data_manifests/{adapter.manifest_name}.yaml is named "
            f"{manifest.name!r}"
        )
        for key in ("license", "citation"):
            assert getattr(manifest, key).strip(), (
                f"{who(adapter)}: manifest {adapter.manifest_name!r} has an empty {key}"
            )
        assert manifest.releases, f"{who(adapter)}: manifest {manifest.name!r} lists no release"

    def test_check_passes_and_describe_is_json(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request)  # runs check()
        info = adapter.describe()
        assert info.get("adapter") == adapter.name, (
            f"{who(adapter)}: describe()['adapter'] is {info.get('adapter')!r}"
        )
        assert list(info.get("categories", ())) == list(adapter.categories), (
            f"{who(adapter)}: describe()['categories'] is not its categories"
        )
        try:
            json.dumps(info)
        except TypeError as e:
            raise AssertionError(f"{who(adapter)}: describe() is not JSON: {e}") from e

    # -- its labels and samples -------------------------------------------------------------

    def test_vocabulary_covers_every_category(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request)
        vocab = adapter.vocabulary()
        missing = [c for c in adapter.categories if c not in vocab]
        assert not missing, f"{who(adapter)}: vocabulary() has no entry for {missing}"
        for c in adapter.categories:
            bad_ids = [i for i in vocab[c] if not _is_int(i) or i <= 0]
            assert not bad_ids, f"{who(adapter)}: {c} ids {bad_ids[:5]} are not integers > 0"
            bad_names = {
                i: names
                for i, names in vocab[c].items()
                if not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n for n in names)
            }
            assert not bad_names, (
                f"{who(adapter)}: {c} names must be non-empty lists of non-empty str: "
                f"{dict(list(bad_names.items())[:5])}"
            )

    def test_samples_have_distinct_ids(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request)
        n = len(adapter)
        assert n > 0, f"{who(adapter)}: len() is {n} on the fixture"
        if self.expected_len is not None:
            assert n == self.expected_len, (
                f"{who(adapter)}: len() is {n}, the fixture has {self.expected_len}"
            )
        ids = [adapter.source_id(i) for i in range(min(n, self.ids_checked))]
        bad = [s for s in ids if not isinstance(s, str) or not s]
        assert not bad, f"{who(adapter)}: source_id() gave non-strings or empty ones: {bad[:5]}"
        twice = sorted({s for s in ids if ids.count(s) > 1})
        assert not twice, f"{who(adapter)}: source_id() repeats {twice[:5]}"

    def test_load_gives_valid_samples_of_their_id(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request)
        prebuilt = adapter.prebuilt()
        for i, sample in self.samples(adapter):
            expected = adapter.source_id(i)
            assert sample.source_id == expected, (
                f"{who(adapter)}: load({i}).source_id is {sample.source_id!r}, "
                f"source_id({i}) is {expected!r}"
            )
            if prebuilt is None:
                try:
                    sample.validate()
                except BrodenError as e:
                    raise AssertionError(f"{who(adapter)}: load({i}) is invalid: {e}") from e
                continue
            s, l_ = prebuilt.image_size, prebuilt.label_size
            im = sample.image
            assert im.shape == (s, s, 3) and im.dtype == np.uint8, (
                f"{who(adapter)}: load({i}).image is {im.shape} {im.dtype}, the release's "
                f"images are ({s}, {s}, 3) uint8"
            )
            for c, arr in sample.pixel.items():
                ok = arr.ndim == 3 and arr.shape[1:] == (l_, l_)
                assert ok and np.issubdtype(arr.dtype, np.integer), (
                    f"{who(adapter)}: load({i}).pixel[{c!r}] is {arr.shape} {arr.dtype}, the "
                    f"release's label maps are K×{l_}×{l_} integer"
                )

    def test_sample_labels_are_declared(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request)
        vocab = adapter.vocabulary()
        pixel = [c for c in adapter.categories if adapter.kind(c) == "pixel"]
        image = [c for c in adapter.categories if adapter.kind(c) == "image"]
        for i, sample in self.samples(adapter):
            where = f"{who(adapter)}: load({i}) ({sample.source_id})"
            stray = [c for c in sample.pixel if c not in pixel]
            assert not stray, f"{where} has pixel maps of {stray}; its pixel categories: {pixel}"
            stray = [c for c in sample.image_labels if c not in image]
            assert not stray, f"{where} has image labels of {stray}; its image categories: {image}"
            for c, arr in sample.pixel.items():
                ids = _label_ids(np.asarray(arr))
                unknown = [v for v in ids if v != 0 and v not in vocab.get(c, {})]
                assert not unknown, f"{where}: {c} ids {unknown[:5]} are not in vocabulary()"
            for c, labels in sample.image_labels.items():
                bad = [v for v in labels if not _is_int(v)]
                assert not bad, f"{where}: {c} image labels {bad[:5]} are not integers"
                unknown = [v for v in labels if v != 0 and v not in vocab.get(c, {})]
                assert not unknown, f"{where}: {c} image labels {unknown[:5]} not in vocabulary()"

    def test_part_of_edges_are_declared(self, request: pytest.FixtureRequest) -> None:
        adapter = self.adapter(request)
        vocab = adapter.vocabulary()
        for i, sample in self.samples(adapter):
            where = f"{who(adapter)}: load({i}) ({sample.source_id})"
            for e in sample.part_of:
                for cat, label in ((e.part_category, e.part), (e.parent_category, e.parent)):
                    assert cat in adapter.categories, (
                        f"{where}: part_of edge {e} names category {cat!r}, not one of "
                        f"{list(adapter.categories)}"
                    )
                    assert label in vocab.get(cat, {}), (
                        f"{where}: part_of edge {e} names {cat} id {label}, not in vocabulary()"
                    )
                assert _is_int(e.pixels) and e.pixels >= 0, (
                    f"{where}: part_of edge {e} has a pixel count that is not an integer ≥ 0"
                )


@dataclass
class _Made:
    """An adapter made for a contract class, with the fixture values it was made from."""

    values: tuple[Any, ...]
    adapter: Adapter
    checked: bool = False
    check_error: str | None = None
    samples: list[tuple[int, SourceSample]] | None = None


def _cache(cls: type) -> dict[str, _Made]:
    """The contract class's own cache (not one inherited from a parent class)."""
    if "_contract_cache" not in cls.__dict__:
        cls._contract_cache = {}  # type: ignore[attr-defined]
    return cls.__dict__["_contract_cache"]  # type: ignore[no-any-return]


def who(adapter: Adapter) -> str:
    """How a failure names the adapter: its registry name and class."""
    cls = type(adapter)
    return f"adapter {getattr(cls, 'name', '?')!r} ({cls.__module__}.{cls.__qualname__})"


def module_doc(adapter: Adapter) -> str:
    """The docstring of the module defining the adapter's class ("" if none)."""
    module = sys.modules.get(type(adapter).__module__)
    return (module.__doc__ or "") if module is not None else ""


def _label_ids(arr: np.ndarray) -> list[int]:
    """The distinct values of an integer label map (by counting where that is cheap)."""
    integer = arr.size and np.issubdtype(arr.dtype, np.integer)
    if integer and arr.min() >= 0 and arr.max() < 1 << 24:
        return np.flatnonzero(np.bincount(arr.ravel())).tolist()
    return np.unique(arr).tolist()


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _skip(reason: str) -> NoReturn:
    import pytest

    pytest.skip(reason)
