"""Fuzzing the two files a user writes or brings (issue 12): build configs and COCO json.

Whatever the input (random structures and values for the config's keys: wrong types,
huge numbers, NaN, unicode, nesting, raw text; random mutations of a small valid COCO
instances file: keys removed, values of the wrong type, huge, negative or NaN numbers in
segmentations, boxes, areas and ids, lists of the wrong length), it ends in success, a
skipped sample (a :class:`SampleError`, listed in the build report), or one
:class:`ConfigError` / :class:`SourceError`: never another exception. Deterministic
(``derandomize``), and quick (a few hundred examples in all)."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")  # the dev extra
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from broden.adapters import SampleError, SourceError  # noqa: E402
from broden.adapters.coco import COCO  # noqa: E402
from broden.config import ConfigError, load_config, make_adapters  # noqa: E402
from tests.conftest import ADE_ROOT, REPO, SAMPLES  # noqa: E402
from tests.test_adapter_coco import instances_doc, write_instances  # noqa: E402

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values a hostile file may hold ---------------------------------------------------------

HUGE = [2**31, 2**63, 2**64 + 1, 10**30, -(2**63) - 1, -1, 0, 1e308, -1e308, 5e-324]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE + SPECIAL_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", " ", "\x00", "ü∂ 😀", "../../etc", "$UNSET_BRODEN_VAR/x", "~", "-1"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# -- build configs --------------------------------------------------------------------------

#: a valid value of each config key, and the boundaries of its range
VALID = {
    "image_size": st.sampled_from([8, 64, 224, 4096]),
    "min_frequency": st.sampled_from([0, 1, 10, 2**40]),
    "min_coverage": st.sampled_from([0, 0.5, 1e300]),
    "colors": st.booleans(),
    "suffixes": st.dictionaries(
        st.sampled_from(["scene", "color", "texture"]), st.text(max_size=4)
    ),
    "splits": st.sampled_from([{"train": 1.0}, {"train": 0.7, "val": 0.3}, {"a": 0.5, "b": 0.5}]),
    "synonyms": st.booleans(),
    "shard_size": st.sampled_from([1, 7, 256, 2**40]),
    "task_size": st.sampled_from([1, 4, 2**40]),
}
GOOD_SOURCES = [{"adapter": "dtd", "root": str(SAMPLES / "dtd")},
                {"adapter": "ade20k", "root": str(ADE_ROOT), "categories": ["object", "part"]},
                {"adapter": "dtd", "root": str(SAMPLES / "dtd"), "name": "dtd-2"}]  # fmt: skip
ADAPTERS = ["dtd", "ade20k", "coco", "folder", "pascal", "no_such_adapter", ""]


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid value seven times in eight, else any hostile value: many inputs get past
    the first checks, so the later ones are fuzzed too."""
    return st.integers(0, 7).flatmap(lambda i: values if i == 0 else valid)


@st.composite
def source_entries(draw: st.DrawFn) -> Any:
    entry = copy.deepcopy(draw(st.sampled_from(GOOD_SOURCES)))
    entry["name"] = f"src{draw(st.integers(0, 9))}"  # mostly distinct
    if draw(st.booleans()):
        return entry
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(["adapter", "root", "name", "categories", "images", "extra"]))
        if draw(st.integers(0, 7)) == 0:
            entry.pop(key, None)
        elif key == "adapter":
            entry[key] = draw(mostly(st.sampled_from(ADAPTERS)))
        elif key == "categories":
            entry[key] = draw(mostly(st.lists(st.sampled_from(["texture", "object", "x", ""]))))
        else:
            entry[key] = draw(mostly(st.text(max_size=12)))
    return draw(mostly(st.just(entry)))


@st.composite
def configs(draw: st.DrawFn) -> Any:
    cfg: dict[Any, Any] = {}
    for key in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=5, unique=True)):
        cfg[key] = draw(mostly(VALID[key]))
    cfg["sources"] = draw(mostly(st.lists(source_entries(), min_size=1, max_size=3)))
    if draw(st.integers(0, 9)) == 0:
        cfg[draw(st.text(max_size=6))] = draw(values)  # a key the config does not know
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(st.lists(st.just(cfg), max_size=2), values))  # wrong top level
    return cfg


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def config_outcome(path: Path) -> str:
    """ "ok", or the name of the user error a config ends in (anything else propagates)."""
    try:
        make_adapters(load_config(path))
    except (ConfigError, SourceError) as e:
        assert str(e).strip(), "an error without a message"
        return type(e).__name__
    return "ok"


@FUZZ
@given(doc=configs())
def test_any_build_config_is_valid_or_one_config_or_source_error(doc: Any, fuzz_dir: Path) -> None:
    path = fuzz_dir / "build.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    outcome = config_outcome(path)
    event(outcome)  # --hypothesis-show-statistics: how many were valid
    assert outcome in ("ok", "ConfigError", "SourceError")


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200)),
       suffix=st.sampled_from([".yaml", ".toml"]))  # fmt: skip
def test_any_config_text_is_valid_or_one_config_error(
    text: str | bytes, suffix: str, fuzz_dir: Path
) -> None:
    path = fuzz_dir / f"raw{suffix}"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    assert config_outcome(path) in ("ok", "ConfigError", "SourceError")


# -- COCO json ------------------------------------------------------------------------------


def locations(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a json document (the paths to its nodes, the root excluded)."""
    if not isinstance(node, dict | list):
        return []
    out = []
    for key, child in node.items() if isinstance(node, dict) else enumerate(node):
        out.append((*at, key))
        out += locations(child, (*at, key))
    return out


def _parent(doc: Any, where: tuple[Any, ...]) -> Any:
    for key in where[:-1]:
        doc = doc[key]
    return doc


COCO_VALUES = st.one_of(
    values,
    st.sampled_from(HUGE + SPECIAL_FLOATS),
    st.lists(st.sampled_from(HUGE + SPECIAL_FLOATS + [1.5, 3]), max_size=9),  # boxes, polygons
    st.just([[1.0, 2.0, 3.0]]),  # a polygon of 1.5 points
    st.just({"counts": [5, -3, 2], "size": [40, 50]}),  # an RLE with a negative run
    st.just({"counts": "\u00ff\u00fe", "size": [40, 50]}),  # an RLE string not of its alphabet
    st.just({"counts": [2000], "size": [-40, 50]}),
    st.just({"size": [40, 50]}),
)


@st.composite
def mutated_coco(draw: st.DrawFn) -> dict[str, Any]:
    """The valid instances file of the COCO tests, mutated one to four times."""
    doc = copy.deepcopy(BASE_COCO)
    for _ in range(draw(st.integers(1, 4))):
        places = locations(doc)
        if not places:
            break
        where = draw(st.sampled_from(places))
        parent, key = _parent(doc, where), where[-1]
        action = draw(st.sampled_from(["delete", "replace", "replace", "shorten", "repeat"]))
        if action == "delete":
            del parent[key]
        elif action == "replace":
            parent[key] = copy.deepcopy(draw(COCO_VALUES))  # st.just gives one shared object
        elif isinstance(parent[key], list) and parent[key]:
            value = parent[key]
            parent[key] = value[: len(value) // 2] if action == "shorten" else value + value[:1]
        else:
            parent[key] = copy.deepcopy(draw(COCO_VALUES))
    return doc


BASE_COCO = instances_doc()


def coco_outcome(images: Path, annotations: Path) -> list[str]:
    """What reading every sample of the source gives: "ok" or "skipped" per sample, or
    ["SourceError"] (anything else propagates)."""
    try:
        adapter = COCO.from_config({"images": str(images), "annotations": str(annotations)})
        adapter.check()
        adapter.vocabulary()
        n = len(adapter)
        ids = [adapter.source_id(i) for i in range(n)]
    except SourceError as e:
        assert str(e).strip()
        return ["SourceError"]
    outcome = []
    for i in range(n):
        try:
            sample = adapter.load(i)
        except SampleError as e:
            assert str(e).strip()
            outcome.append("skipped")
            continue
        assert sample.source_id == ids[i]
        outcome.append("ok")
    return outcome


def run_coco_fuzz(folder: Path) -> None:
    """The COCO fuzz, run in a child process by the test below: pycocotools is C, and a
    hostile file can make it allocate without bound or crash. Each input is written to
    ``folder/current.json`` first, so a crash still leaves the input that caused it."""
    images, annotations = write_instances(folder, BASE_COCO)
    current = folder / "current.json"

    @FUZZ
    @given(doc=mutated_coco())
    def one(doc: dict[str, Any]) -> None:
        text = json.dumps(doc)  # NaN and Infinity as json.dumps writes them
        current.write_text(text)
        annotations.write_text(text)
        assert set(coco_outcome(images, annotations)) <= {"ok", "skipped", "SourceError"}

    one()


def _cap_memory() -> None:  # in the child, before it runs: a runaway allocation fails
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(4 << 30, hard) if hard > 0 else 4 << 30, hard))


# In a child process with capped memory: a crash in pycocotools' C code (which the
# geometry checks of adapters/coco_geometry.py prevent) or a runaway allocation fails the
# test with the input that caused it, instead of killing the test run.
def test_any_mutated_coco_json_is_read_skipped_or_one_source_error(tmp_path: Path) -> None:
    code = f"from pathlib import Path; from tests.hardening.test_fuzz import run_coco_fuzz; " \
           f"run_coco_fuzz(Path({str(tmp_path)!r}))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=600, preexec_fn=_cap_memory)  # fmt: skip
    current = tmp_path / "current.json"
    last = current.read_text()[:3000] if current.exists() else "(none)"
    assert done.returncode == 0, (
        f"exit status {done.returncode}; the last input:\n{last}\n{done.stderr[-4000:]}"
    )


@pytest.fixture
def coco_dir(tmp_path: Path) -> tuple[Path, Path]:
    return write_instances(tmp_path, BASE_COCO)


def test_the_unmutated_coco_file_reads_whole(coco_dir: tuple[Path, Path]) -> None:
    """The fuzz starts from a file that reads: a mutation, not the base, fails it."""
    images, annotations = coco_dir
    annotations.write_text(json.dumps(BASE_COCO))
    assert coco_outcome(images, annotations) == ["ok", "ok", "ok"]
