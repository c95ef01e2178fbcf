"""Every error of the operating system is a user error (issue 12, item 6): a full disk, no
inodes left, a read-only file system, permission denied, a name too long, a path through
a regular file, a damaged ``zarr.json`` or malformed store attributes end the command
with one ``error:`` line naming the path (exit status 2, no traceback), and a build
stopped that way resumes, once the cause is gone, to the store a clean build writes.

The file-system faults are real: as root, a small tmpfs is mounted in tmp_path (a full
disk, inodes used up, remounted read-only, then bigger or writable again); permissions
are tested as root with the capabilities that bypass them dropped (``setpriv``), or
as an ordinary user. Where neither is possible the test is skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from broden.cli import app
from broden.store import open_store, validate_store
from tests.conftest import SAMPLES
from tests.store_helpers import assert_stores_equal

runner = CliRunner()
CONFIG = SAMPLES / "broden-sample.yaml"
RESUMABLE = "run the same command again"


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


def build_cli(out: Path):
    return runner.invoke(app, ["build", str(CONFIG), "--out", str(out), "-q"])


def assert_same_as_clean(reference: Path, out: Path) -> None:
    """The store at ``out`` equals a clean build of the same config, array by array."""
    assert_stores_equal(reference, out)
    a, b = open_store(reference), open_store(out)
    for name in a.array_names():
        assert np.array_equal(np.asarray(a.array(name)[:]), np.asarray(b.array(name)[:])), name
    assert validate_store(out) == []


def leftovers(folder: Path) -> list[str]:
    """What a failed or resumed build left in ``folder`` besides the store (its lock file
    is removed, its staging folder once the store is complete)."""
    return sorted(p.name for p in folder.iterdir() if p.name != "lost+found")


# -- a small file system of our own (root only) --------------------------------------------

Mount = Callable[[str], None]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[tuple[Path, Mount]]:
    """A folder with a tmpfs mounted on it, and ``remount(options)``; skipped unless this
    runs as root and may mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "fs"
    folder.mkdir()
    state = {"mounted": False}

    def remount(options: str) -> None:
        verb = ["-o", f"remount,{options}"] if state["mounted"] else ["-t", "tmpfs", "-o", options]
        done = subprocess.run(["mount", *verb, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        state["mounted"] = True

    try:
        yield folder, remount
    finally:
        if state["mounted"]:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize(
    "options",
    [
        "size=2m",  # full while the tasks are staged (STORE.build/)
        "size=5m",  # full while the store's shards are written
        "size=64m,nr_inodes=60",  # room, but no inode left for the next file
    ],
)
def test_a_full_disk_is_one_error_line_and_the_build_resumes(
    options: str, tmpfs: tuple[Path, Mount], sample_store_path: Path
) -> None:
    folder, remount = tmpfs
    remount(options)
    out = folder / "s.zarr"
    line = one_error_line(build_cli(out), str(out), "No space left on device", RESUMABLE)
    assert "s.zarr.build" in leftovers(folder), line  # the finished tasks are kept

    remount("size=64m,nr_inodes=100000")  # space freed
    again = build_cli(out)
    assert again.exit_code == 0, again.output
    assert "resumed:" in again.output
    assert leftovers(folder) == ["s.zarr"]
    assert_same_as_clean(sample_store_path, out)


def test_a_read_only_file_system_stops_a_resumed_build_which_then_finishes(
    tmpfs: tuple[Path, Mount], sample_store_path: Path
) -> None:
    folder, remount = tmpfs
    remount("size=5m")
    out = folder / "s.zarr"
    one_error_line(build_cli(out), "No space left on device")  # an incomplete store
    remount("ro,size=64m")
    one_error_line(build_cli(out), str(out), "Read-only file system")
    remount("rw,size=64m")
    again = build_cli(out)
    assert again.exit_code == 0, again.output
    assert_same_as_clean(sample_store_path, out)


def test_dissect_results_on_a_read_only_file_system(
    tmpfs: tuple[Path, Mount], sample_store_path: Path, tmp_path: Path
) -> None:
    folder, remount = tmpfs
    remount("ro,size=1m")
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(26, 2, 4, 4)).astype(np.float32))
    result = runner.invoke(app, ["dissect", str(sample_store_path), "--out", str(folder / "o"),
                                 "-q", "--no-report", "--activations", str(acts)])  # fmt: skip
    one_error_line(result, str(folder / "o"), "Read-only file system", RESUMABLE)


# -- permissions ---------------------------------------------------------------------------


def _without_permission_override() -> list[str]:
    """The command prefix that runs broden subject to file permissions: nothing for an
    ordinary user; for root, ``setpriv`` without the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file modes, and setpriv is not installed to drop that")
    probe = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "true"])
    if probe.returncode != 0:
        pytest.skip("setpriv cannot drop root's capabilities here")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_permission_denied_on_the_output_folder_then_granted(
    tmp_path: Path, sample_store_path: Path
) -> None:
    prefix = _without_permission_override()
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    out = parent / "s.zarr"
    cmd = [*prefix, sys.executable, "-m", "broden", "build", str(CONFIG), "--out", str(out), "-q"]
    denied = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert denied.returncode == 2, denied.stderr
    lines = denied.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), denied.stderr
    assert str(out) in lines[0] and "Permission denied" in lines[0]
    assert leftovers(parent) == []

    parent.chmod(0o700)
    granted = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert granted.returncode == 0, granted.stderr
    assert_same_as_clean(sample_store_path, out)


# -- names the file system refuses (any user) ----------------------------------------------


def test_an_output_name_too_long(tmp_path: Path) -> None:
    out = tmp_path / ("a" * 300 + ".zarr")
    one_error_line(build_cli(out), "File name too long")
    assert leftovers(tmp_path) == []


def test_an_output_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "s.zarr"
    one_error_line(build_cli(out), str(out))
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize("where", ["under a file", "name too long"])
def test_a_concept_set_that_cannot_be_written(
    where: str, sample_store_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "set.csv" if where == "under a file" else tmp_path / ("s" * 300)
    reason = "Not a directory" if where == "under a file" else "File name too long"
    result = runner.invoke(app, ["concepts", str(sample_store_path), "--write-set", str(path)])
    one_error_line(result, str(path), reason)


def test_dissect_results_under_a_regular_file(sample_store_path: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(26, 2, 4, 4)).astype(np.float32))
    out = tmp_path / "file" / "out"
    result = runner.invoke(app, ["dissect", str(sample_store_path), "--out", str(out), "-q",
                                 "--no-report", "--activations", str(acts)])  # fmt: skip
    one_error_line(result, str(out), "Not a directory")


# -- damaged metadata ----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit_attrs(store: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    edit(doc["attributes"])
    (store / "zarr.json").write_text(json.dumps(doc))


# name: (damage, the file the error line names (relative to the store), phrases)
DAMAGE: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "truncated zarr.json": (lambda s: _truncate(s / "zarr.json"), "zarr.json", ["not valid JSON"]),
    "emptied zarr.json": (
        lambda s: (s / "zarr.json").write_text(""),
        "zarr.json",
        ["not valid JSON"],
    ),
    "zarr.json a JSON list": (
        lambda s: (s / "zarr.json").write_text("[1, 2]"),
        "zarr.json",
        ["expected a JSON object", "list"],
    ),
    "zarr.json not text": (
        lambda s: (s / "zarr.json").write_bytes(b"\xff\xfe\x00"),
        "zarr.json",
        ["not valid JSON"],
    ),
    "a size that is text": (
        lambda s: _edit_attrs(s, lambda a: a["broden"].update(images="many")),
        "",
        ["damaged store metadata", "images"],
    ),
    "attributes a list": (
        lambda s: _edit_attrs(s, lambda a: a.update(broden=[1])),
        "",
        ["damaged store metadata"],
    ),
    "concept table a number": (
        lambda s: _edit_attrs(s, lambda a: a.update(concepts=5)),
        "",
        ["damaged concept table", "valid list"],
    ),
    "concept with a text id": (
        lambda s: _edit_attrs(s, lambda a: a["concepts"][0].update(id="x")),
        "",
        ["damaged concept table", "0.id"],
    ),
}


@pytest.fixture
def store_copy(sample_store_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "s.zarr"
    shutil.copytree(sample_store_path, dst)
    return dst


@pytest.mark.parametrize("command", ["info", "concepts", "upgrade"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_store_metadata_is_one_error_line_naming_it(
    damage: str, command: str, store_copy: Path
) -> None:
    spoil, file, phrases = DAMAGE[damage]
    spoil(store_copy)
    named = store_copy / file if file else store_copy
    one_error_line(runner.invoke(app, [command, str(store_copy)]), f"{named}:", *phrases)
    problems = runner.invoke(app, ["validate", str(store_copy)])
    assert problems.exit_code == 1 and str(named) in problems.output, problems.output


def test_a_truncated_array_document_is_named_by_upgrade_and_validate(store_copy: Path) -> None:
    _truncate(store_copy / "image" / "zarr.json")
    one_error_line(
        runner.invoke(app, ["upgrade", str(store_copy)]),
        str(store_copy / "image" / "zarr.json"),
        "not valid JSON",
    )
    problems = runner.invoke(app, ["validate", str(store_copy)])
    assert problems.exit_code == 1 and str(store_copy / "image" / "zarr.json") in problems.output


def test_damaged_consolidated_metadata_is_rewritten_by_upgrade(store_copy: Path) -> None:
    doc = json.loads((store_copy / "zarr.json").read_text())
    doc["consolidated_metadata"] = 5
    (store_copy / "zarr.json").write_text(json.dumps(doc))
    assert any("stale" in p for p in validate_store(store_copy))
    fixed = runner.invoke(app, ["upgrade", str(store_copy)])
    assert fixed.exit_code == 0, fixed.output
    assert validate_store(store_copy) == []


@pytest.mark.parametrize("damage", ["concept table a number", "concept with a text id"])
def test_rebuilding_over_a_damaged_concept_table(damage: str, store_copy: Path) -> None:
    DAMAGE[damage][0](store_copy)
    one_error_line(build_cli(store_copy), str(store_copy), "damaged concept table")
