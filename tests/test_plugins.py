"""Third-party adapters: the example plugin (examples/broden-shapes) installed as a
distribution, found through the ``broden.adapters`` entry points, listed and built by the
real command line.

The plugin is "installed" without pip or network: its module and a ``.dist-info`` folder
(METADATA, entry_points.txt taken from the example's pyproject.toml) go into a folder that
is put on ``sys.path`` (in process) or on ``PYTHONPATH`` (the ``broden`` subprocesses).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from broden import adapters
from broden.adapters import Adapter, SourceError, available_adapters, get_adapter_class
from broden.adapters.dtd import DTD
from broden.adapters.testing import AdapterContract
from broden.config import load_config
from broden.imaging import label_grid, resize_image, sample_labels
from broden.store import open_store
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "broden-shapes"
MODULE = "broden_shapes"


def example_entry_points() -> dict[str, str]:
    """The ``broden.adapters`` entry points the example's pyproject.toml declares."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"][adapters.ENTRY_POINT_GROUP])


def install(
    site: Path,
    entry_points: dict[str, str],
    name: str = "broden_shapes",
    group: str = adapters.ENTRY_POINT_GROUP,
) -> Path:
    """Write a distribution ``name`` 0.1 declaring ``entry_points`` of ``group`` into
    ``site``."""
    site.mkdir(exist_ok=True)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = [f"{ep} = {target}" for ep, target in entry_points.items()]
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "\n".join(lines) + "\n")
    return site


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A path entry holding the example plugin, installed as the distribution broden_shapes."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(EXAMPLE / f"{MODULE}.py", site)
    return install(site, example_entry_points())


@pytest.fixture
def on_path(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``site`` on sys.path for the test; the plugin module is forgotten afterwards."""
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop(MODULE, None)


def broden(*args: str | Path, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``broden`` command with ``site`` on PYTHONPATH."""
    script = Path(sys.executable).with_name("broden")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "broden"]
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [*command, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def listing(stdout: str) -> dict[str, str]:
    """``broden adapters`` output: name → the rest of its line."""
    return dict(line.split(maxsplit=1) for line in stdout.splitlines() if line.strip())


# -- discovery in process ---------------------------------------------------------------------


def test_example_declares_the_shapes_entry_point() -> None:
    assert example_entry_points() == {"shapes": "broden_shapes:Shapes"}


def test_entry_point_is_found_once_its_distribution_is_on_the_path(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "shapes" in available_adapters():
        pytest.skip("broden-shapes is installed in this environment")
    with pytest.raises(SourceError, match="unknown adapter 'shapes'; installed adapters: ade20k"):
        get_adapter_class("shapes")
    with monkeypatch.context() as m:
        m.syspath_prepend(str(site))
        # no stale importlib.metadata cache: the new path entry is seen at once
        assert available_adapters()["shapes"] == "broden_shapes:Shapes"
        cls = get_adapter_class("shapes")
        assert cls.__name__ == "Shapes" and issubclass(cls, adapters.Adapter)
        assert Path(sys.modules[MODULE].__file__ or "").parent == site
        assert cls.kinds == {"object": "pixel"}
        assert available_adapters()["dtd"] == "broden.adapters.dtd:DTD"  # built-ins still there
    sys.modules.pop(MODULE, None)
    assert "shapes" not in available_adapters()  # and gone with the path entry


def test_shapes_samples_are_deterministic_and_labeled(on_path: Path) -> None:
    cls = get_adapter_class("shapes")
    a = cls.from_config({"count": 5, "size": 64, "seed": 7})
    assert len(a) == 5 and a.categories == ("object",)
    assert a.vocabulary() == {"object": {1: ["circle"], 2: ["square"]}}
    assert [a.source_id(i) for i in (0, 4)] == ["shape_0000", "shape_0004"]
    first, again = a.load(3), cls.from_config({"count": 5, "size": 64, "seed": 7}).load(3)
    first.validate()
    assert first.source_id == "shape_0003" and first.image.shape == (64, 64, 3)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.pixel["object"], again.pixel["object"])
    other = cls.from_config({"count": 5, "size": 64, "seed": 8}).load(3)
    assert not np.array_equal(first.pixel["object"], other.pixel["object"])
    labels = np.stack([a.load(i).pixel["object"] for i in range(len(a))])
    assert set(np.unique(labels)) == {0, 1, 2}
    # shapes are painted over a plain background: every unlabeled pixel has its colour
    background = first.image[first.pixel["object"][0] == 0]
    assert len(np.unique(background, axis=0)) == 1
    assert cls.from_config({}).options.model_dump() == {"count": 24, "size": 96, "seed": 0}
    (example,) = load_config(EXAMPLE / "shapes.yaml").sources
    assert isinstance(example.make_adapter(), cls) and len(example.make_adapter()) == 24
    with pytest.raises(SourceError, match=r"source 'shapes': invalid config: root: Extra"):
        cls.from_config({"root": "/data"})
    with pytest.raises(SourceError, match=r"count: Input should be greater than or equal to 1"):
        cls.from_config({"count": 0})


class TestShapesContract(AdapterContract):
    """The example plugin, installed: the contract also finds it in the registry."""

    expected_len = 5
    draws_tree = False  # a synthetic source: no folder to draw

    def make_adapter(self, on_path: Path) -> Adapter:
        shapes: type[Adapter] = importlib.import_module(MODULE).Shapes
        return shapes.from_config({"count": 5, "size": 32})


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("broden_no_such_module:Shapes", "No module named 'broden_no_such_module'"),
        ("broden_shapes:NoSuchClass", "has no attribute 'NoSuchClass'"),
    ],
)
def test_broken_entry_point_is_a_clear_source_error(
    site: Path, monkeypatch: pytest.MonkeyPatch, target: str, reason: str
) -> None:
    install(site, {"broken": target}, name="broden_broken")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(SourceError) as err:
        get_adapter_class("broken")
    assert str(err.value).startswith(f"adapter 'broken' ({target}) cannot be loaded: ")
    assert reason in str(err.value)
    sys.modules.pop(MODULE, None)


def test_entry_point_that_is_no_adapter_or_shadows_a_builtin(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points = {"options": "broden_shapes:ShapesOptions", "dtd": "broden_shapes:Shapes"}
    install(site, entry_points, name="broden_more")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(SourceError, match=r"'options' \(broden_shapes:ShapesOptions\) is not an"):
        get_adapter_class("options")
    assert get_adapter_class("dtd") is DTD  # built-ins win over entry points
    sys.modules.pop(MODULE, None)


# -- the real command line ----------------------------------------------------------------------


def test_cli_lists_the_plugin_and_survives_a_broken_one(site: Path, tmp_path: Path) -> None:
    install(site, {"broken": "broden_no_such_module:Broken"}, name="broden_broken")
    result = broden("adapters", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = listing(result.stdout)
    assert rows["shapes"].split() == ["object", "(pixel)", "broden_shapes:Shapes"]
    assert rows["dtd"].split() == ["texture", "(image)", "broden.adapters.dtd:DTD"]
    assert set(adapters.builtin_adapters()) < set(rows)
    assert rows["broken"].split() == ["(cannot", "be", "loaded)", "broden_no_such_module:Broken"]
    assert result.stderr == (
        "warning: adapter 'broken' (broden_no_such_module:Broken) cannot be loaded: "
        "ModuleNotFoundError: No module named 'broden_no_such_module'\n"
    )


def test_cli_builds_a_store_from_the_plugin(on_path: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((EXAMPLE / "shapes.yaml").read_text())
    (source,) = config["sources"]
    assert source["adapter"] == "shapes" and config["image_size"] == 64
    source.update(count=12, size=90, seed=5)  # a non-default set, and a smaller one
    options = {k: v for k, v in source.items() if k != "adapter"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = broden("build", "cfg.yaml", "--out", "store.zarr", "-q", site=on_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    store = open_store(tmp_path / "store.zarr")
    assert len(store) == options["count"] and store.label_size == 32
    assert [c.name for c in store.categories] == ["object"]
    ids = {c.name: c.id for c in store.concepts}
    assert set(ids) == {"circle", "square"}
    assert {c.category for c in store.concepts} == {"object"}
    assert sorted(store.meta("source_id")) == [f"shape_{i:04d}" for i in range(12)]
    assert set(store.meta("source")) == {"shapes"}

    # the store holds exactly what the adapter drew, resized the build's way
    adapter = get_adapter_class("shapes").from_config(options)
    seen = {"circle": 0, "square": 0}
    for i in range(len(store)):
        sample = adapter.load(int(str(store.meta("source_id")[i]).removeprefix("shape_")))
        assert np.array_equal(store.image(i), resize_image(sample.image, 64))
        rows, cols = label_grid(sample.image.shape[:2], store.label_size)
        drawn = sample_labels(sample.pixel["object"], rows, cols)[0]
        stored = store.labels(i)[0]["object"]
        assert stored.shape[1:] == (32, 32) and not stored[1:].any()
        for name, local in (("circle", 1), ("square", 2)):
            assert np.array_equal(stored[0] == ids[name], drawn == local), (i, name)
            seen[name] += bool((sample.pixel["object"] == local).any())
    assert {c.name: c.frequency for c in store.concepts} == seen
    assert min(seen.values()) > 0


# -- command groups -----------------------------------------------------------------------------

HELLO = """
import typer


def hello() -> None:
    \"\"\"Say hello (a third-party command).\"\"\"
    typer.echo("hello from a plugin")


def register(app: typer.Typer) -> None:
    app.command("hello")(hello)
"""


def test_third_party_command_groups_join_and_a_broken_one_names_itself(tmp_path: Path) -> None:
    from broden.cli import COMMANDS_GROUP

    site = tmp_path / "site"
    site.mkdir()
    (site / "broden_hello.py").write_text(HELLO)
    (site / "broden_typo.py").write_text("import no_such_module_for_broden\n")
    install(site, {"hello": "broden_hello:register"}, name="broden_hello", group=COMMANDS_GROUP)
    install(site, {"typo": "broden_typo:register"}, name="broden_typo", group=COMMANDS_GROUP)
    r = broden("hello", site=site, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "hello from a plugin\n"
    assert r.stderr == (
        "error: command group 'typo' (broden_typo:register) cannot be loaded: "
        "ModuleNotFoundError: No module named 'no_such_module_for_broden'; its commands are "
        "not available\n"
    )
    r = broden("adapters", site=site, cwd=tmp_path)  # broden's own commands still work
    assert r.returncode == 0 and "dtd" in r.stdout and "cannot be loaded" in r.stderr
    r = broden("--help", site=site, cwd=tmp_path)
    assert "hello" in r.stdout and "dissect" in r.stdout and "typo" in r.stderr
