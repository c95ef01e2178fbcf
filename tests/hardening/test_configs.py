"""Hostile configs and concept sets (issue 12, item 6): a config that is a folder, missing,
unreadable, empty, not a mapping, with a key given twice or given no value, ends the
command with one ``error:`` line naming the file (exit status 2, no traceback) before
anything is written. Every input is built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from broden.cli import app
from broden.concept_set import ConceptSetError, resolve
from broden.config import ConfigError, load_config
from broden.store import open_store

runner = CliRunner()

SOURCE = "sources:\n  - adapter: dtd\n    root: dtd\n"


def one_error_line(result, *phrases: str) -> str:
    """Exit status 2, exactly one line of output, an ``error:`` line holding every phrase,
    and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def build_cli(config: Path | str, out: Path):
    return runner.invoke(app, ["build", str(config), "--out", str(out), "-q"])


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# (file name, contents, phrases the one error line must hold beside the file's name)
HOSTILE = {
    "empty": ("empty.yaml", "", ["the config is empty", "sources:"]),
    "comments only": ("c.yaml", "# nothing here\n\n", ["the config is empty"]),
    "duplicate top-level key": (
        "dup.yaml",
        "image_size: 224\nmin_frequency: 1\nimage_size: 112\n" + SOURCE,
        ["line 3", "duplicate key 'image_size'", "first given on line 1"],
    ),
    "duplicate key in a source": (
        "dupsrc.yaml",
        "sources:\n  - adapter: dtd\n    root: a\n    root: b\n",
        ["line 4", "duplicate key 'root'", "first given on line 3"],
    ),
    "sources with nothing": ("nosrc.yaml", "image_size: 64\nsources:\n", ["sources: no value"]),
    "a key with nothing": ("noval.yaml", "image_size:\n" + SOURCE, ["image_size: no value"]),
    "top level a list": ("list.yaml", "- adapter: dtd\n", ["expected a mapping", "list"]),
    "top level a string": ("str.yaml", "just words\n", ["expected a mapping", "str"]),
    "not UTF-8": ("latin.yaml", b"image_size: 224\nname: caf\xe9\xff\n", ["cannot parse"]),
    "nested too deeply": ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", ["cannot parse"]),
    "NaN split": (
        "nan.yaml",
        "splits: {train: .nan, val: 1.0}\n" + SOURCE,
        ["splits", "non-negative and sum to 1"],
    ),
    "infinite coverage": ("inf.yaml", "min_coverage: .inf\n" + SOURCE, ["min_coverage"]),
    "duplicate TOML key": (
        "dup.toml",
        'image_size = 224\nimage_size = 112\n[[sources]]\nadapter = "dtd"\n',
        ["cannot parse"],
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_config_is_one_error_line_naming_it(case: str, tmp_path: Path) -> None:
    name, text, phrases = HOSTILE[case]
    config = write(tmp_path / name, text)
    out = tmp_path / "out.zarr"
    one_error_line(build_cli(config, out), str(config), *phrases)
    assert not out.exists() and not list(tmp_path.glob("out.zarr*"))  # nothing written


def test_a_config_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").mkdir()
    one_error_line(build_cli(tmp_path / "cfg.yaml", tmp_path / "o.zarr"), "is a folder")


def test_a_missing_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    one_error_line(build_cli(missing, tmp_path / "o.zarr"), str(missing), "does not exist")


def test_a_config_under_a_regular_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "file", "x") / "cfg.yaml"
    one_error_line(build_cli(bad, tmp_path / "o.zarr"), str(bad), "file is a file, not a folder")


def test_a_config_whose_name_is_too_long(tmp_path: Path) -> None:
    bad = tmp_path / ("c" * 300 + ".yaml")
    one_error_line(build_cli(bad, tmp_path / "o.zarr"), "File name too long")


def test_an_unreadable_config(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    config = write(tmp_path / "secret.yaml", SOURCE)
    config.chmod(0)
    one_error_line(build_cli(config, tmp_path / "o.zarr"), str(config), "Permission denied")


def test_yaml_merge_keys_may_still_override(tmp_path: Path) -> None:
    """The duplicate-key check leaves YAML's merge (``<<``) alone: overriding a merged
    key is what it is for."""
    config = write(
        tmp_path / "merge.yaml",
        "base: &base {adapter: dtd, root: dtd}\n"  # an unknown key, to stop after parsing
        "sources:\n  - <<: *base\n    root: other\n",
    )
    with pytest.raises(ConfigError, match=r"base: Extra inputs"):
        load_config(config)


# -- concept sets (the same YAML loader) ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        ("concepts: [car]\nconcepts: [sky]\n", ["line 2", "duplicate key 'concepts'"]),
        ("concepts: 5\n", ["concepts: expected a list", "int"]),
        ("categories: texture\n", ["categories: expected a list", "str"]),
        ("1: a\nconcepts: [car]\n", ["unknown keys ['1']"]),
        ("concepts: [car\n", ["not valid YAML", "line 2"]),
    ],
)
def test_a_hostile_concept_set_names_the_file(
    text: str, phrases: list[str], sample_store_path: Path, tmp_path: Path
) -> None:
    store = open_store(sample_store_path)
    path = write(tmp_path / "set.yaml", text)
    with pytest.raises(ConceptSetError) as info:
        resolve(store.concepts, [c.name for c in store.categories], [str(path)])
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    for p in phrases:
        assert p in message, message


def test_a_concept_name_too_long_for_a_path_is_an_unknown_concept(
    sample_store_path: Path,
) -> None:
    store = open_store(sample_store_path)
    with pytest.raises(ConceptSetError, match="unknown concepts"):
        resolve(store.concepts, [c.name for c in store.categories], ["x" * 300])


def test_dissect_with_a_duplicate_key_concept_set(sample_store_path: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "set.yaml", "concepts: [car]\ncategories: [texture]\nconcepts: [sky]\n")
    acts = np.random.default_rng(0).normal(size=(26, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    result = runner.invoke(app, ["dissect", str(sample_store_path), "--out", str(tmp_path / "out"),
                                 "-q", "--no-report", "--activations", str(tmp_path / "acts.npy"),
                                 "--concepts", str(path)])  # fmt: skip
    one_error_line(result, str(path), "duplicate key 'concepts'", "line 3")
