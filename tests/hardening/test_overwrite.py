"""Never delete what is not ours: ``--overwrite`` and every output that replaces something
remove only a broden store, a build's staging folder, a report's files or an empty folder;
anything else is refused with one ``error:`` line naming the path, and stays as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect.synthetic import random_store
from broden.errors import StoreError
from broden.removal import STORE, remove_ours
from broden.store import validate_store
from tests.conftest import SAMPLES
from tests.store_helpers import assert_stores_equal

CONFIG = str(SAMPLES / "broden-sample.yaml")
runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (itself included) with its content's digest."""
    found = {".": "dir" if root.is_dir() else hashlib.sha256(root.read_bytes()).hexdigest()}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                found[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def one_error_line(result: object) -> str:
    """The single ``error:`` line a refused command prints (exit status 2, no traceback)."""
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    return err.strip()


def overwrite(out: str | Path) -> object:
    return runner.invoke(app, ["build", CONFIG, "--out", str(out), "--overwrite", "-q"])


def test_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    work = tmp_path / "thesis"
    (work / "chapters").mkdir(parents=True)
    (work / "chapters" / "one.tex").write_text("\\chapter{One}")
    (work / "notes.txt").write_text("do not lose")
    before = snapshot(tmp_path)
    err = one_error_line(overwrite(work))
    assert str(work) in err and "not a broden store" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", [".", ".."])
def test_overwrite_refuses_the_current_folder_and_its_parent(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "project" / "here"
    cwd.mkdir(parents=True)
    if where == "..":
        (tmp_path / "project" / "data.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(cwd)  # even the empty current folder is refused
    before = snapshot(tmp_path)
    err = one_error_line(overwrite(where))
    assert "current folder" in err and where in err
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_file_and_a_link(sample_store_path: Path, tmp_path: Path) -> None:
    f = tmp_path / "results.zarr"
    f.write_text("not a folder")
    link = tmp_path / "link.zarr"
    link.symlink_to(sample_store_path, target_is_directory=True)
    before, store_before = snapshot(tmp_path), snapshot(sample_store_path)
    err = one_error_line(overwrite(f))
    assert str(f) in err and "file" in err
    err = one_error_line(overwrite(link))
    assert str(link) in err and "symbolic link" in err
    assert snapshot(tmp_path) == before and snapshot(sample_store_path) == store_before


def test_overwrite_refuses_a_store_holding_other_files(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(sample_store_path, out)
    (out / "my-notes.md").write_text("kept inside the store folder")
    before = snapshot(tmp_path)
    err = one_error_line(overwrite(out))
    assert str(out) in err and "my-notes.md" in err
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_staging_folder_holding_other_files(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    (tmp_path / "s.zarr.build").mkdir()
    (tmp_path / "s.zarr.build" / "photos.tar").write_text("x")
    before = snapshot(tmp_path)
    err = one_error_line(overwrite(out))
    assert "s.zarr.build" in err and "photos.tar" in err
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_real_store_and_its_staging(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.zarr"
    other = runner.invoke(app, ["build", CONFIG, "--out", str(out), "-q"])
    assert other.exit_code == 0, other.output
    # the store of another config, and a staging folder another run left
    cfg = tmp_path / "other.yaml"
    text = Path(CONFIG).read_text().replace("min_frequency: 1", "min_frequency: 3")
    cfg.write_text(text.replace("root: ", f"root: {SAMPLES}/"))
    (tmp_path / "s.zarr.build").mkdir()
    (tmp_path / "s.zarr.build" / "plan.json").write_text('{"fingerprint": "old", "tasks": 1}')
    refused = runner.invoke(app, ["build", str(cfg), "--out", str(out), "-q"])
    assert "another config" in one_error_line(refused)
    r = runner.invoke(app, ["build", str(cfg), "--out", str(out), "--overwrite", "-q"])
    assert r.exit_code == 0, r.output
    r = overwrite(out)
    assert r.exit_code == 0, r.output
    assert_stores_equal(sample_store_path, out)
    assert not (tmp_path / "s.zarr.build").exists()


def test_an_empty_folder_may_be_overwritten(sample_store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty.zarr"
    out.mkdir()
    r = overwrite(out)
    assert r.exit_code == 0, r.output
    assert_stores_equal(sample_store_path, out)


def test_remove_ours_refuses_what_holds_a_path_the_command_reads(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(sample_store_path, out)
    with pytest.raises(StoreError, match=r"s\.zarr: it holds .*meta"):
        remove_ours(out, STORE, keep=[out / "meta"])
    assert validate_store(out) == []
    assert remove_ours(out, STORE) and not out.exists()
    assert remove_ours(out, STORE) is False  # nothing there: nothing to do


# -- outputs of the dissection and the export ------------------------------------------------


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    sizes = {"n_objects": 6, "n_parts": 3, "n_materials": 3, "n_scenes": 2, "n_textures": 2}
    return random_store(tmp_path / "small.zarr", n_images=8, image_size=32, shard_size=4, **sizes)


def dissect_args(store: Path, out: Path, acts: Path) -> list[str]:
    return ["dissect", str(store), "--out", str(out), "--activations", str(acts),
            "--quantile", "0.1", "--workers", "0", "--device", "cpu", "-q"]  # fmt: skip


def test_results_out_that_is_a_store_or_inside_one_is_refused(
    small_store: Path, tmp_path: Path
) -> None:
    acts = tmp_path / "conv.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32))
    (small_store / "meta" / "empty").mkdir()
    before = snapshot(small_store)
    for out, why in ((small_store, "is a broden store"), (small_store / "meta", "inside the store"),
                     (small_store / "meta" / "empty", "inside the store")):  # fmt: skip
        r = runner.invoke(app, [*dissect_args(small_store, out, acts), "--no-report"])
        err = one_error_line(r)
        assert str(out) in err and why in err
    f = tmp_path / "out.txt"
    f.write_text("x")
    assert "is a file" in one_error_line(
        runner.invoke(app, [*dissect_args(small_store, f, acts), "--no-report"])
    )
    assert snapshot(small_store) == before
    (small_store / "meta" / "empty").rmdir()
    assert validate_store(small_store) == []
    ok = runner.invoke(app, [*dissect_args(small_store, tmp_path / "results", acts), "--no-report"])
    assert ok.exit_code == 0, ok.output  # the same command with a results folder of its own


def test_library_calls_and_experiments_refuse_a_store_as_their_output(
    small_store: Path, tmp_path: Path
) -> None:
    """The Python functions check ``out`` as the commands do, and `compare` and `segment`
    never write into a store or over a folder."""
    from broden.dissect import DissectError, score_activations
    from broden.store.lock import store_lock

    acts = tmp_path / "conv.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32))
    before = snapshot(small_store)
    with pytest.raises(DissectError, match="is a broden store"):
        score_activations(small_store, acts, out=small_store)
    results = tmp_path / "results"
    ok = runner.invoke(app, [*dissect_args(small_store, results, acts), "--no-report"])
    assert ok.exit_code == 0, ok.output
    inside = small_store / "meta" / "cmp"
    err = one_error_line(runner.invoke(app, ["compare", str(results), "--out", str(inside)]))
    assert str(inside) in err and "inside the store" in err
    seg = ["segment", "1", "--results", str(results / "conv"), "--store", str(small_store)]
    for out, why in ((small_store / "a.png", "inside the store"), (tmp_path, "is a folder")):
        err = one_error_line(runner.invoke(app, [*seg, "--out", str(out), "--model", "x:y"]))
        assert str(out) in err and why in err
    assert snapshot(small_store) == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with (
        pytest.raises(StoreError, match=f"{blocker} is a file, not a folder"),
        store_lock(blocker / "sub" / "s.zarr"),
    ):
        pass


def test_report_replaces_only_its_own_files(small_store: Path, tmp_path: Path) -> None:
    acts = tmp_path / "conv.npy"
    np.save(acts, np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32))
    out = tmp_path / "results"
    r = runner.invoke(app, dissect_args(small_store, out, acts))
    assert r.exit_code == 0, r.output
    assert (out / "report_files" / "conv").is_dir()
    again = runner.invoke(app, ["report", str(out)])  # its own files: replaced
    assert again.exit_code == 0, again.output
    (out / "report_files" / "conv" / "my-figure.pdf").write_text("kept")
    before = snapshot(out)
    err = one_error_line(runner.invoke(app, ["report", str(out)]))
    assert str(out / "report_files") in err and "my-figure.pdf" in err
    assert snapshot(out) == before


def test_export_into_a_store_is_refused(sample_store_path: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(sample_store_path, store)
    (store / "legacy").mkdir()
    before = snapshot(store)
    err = one_error_line(runner.invoke(app, ["export-legacy", str(store), str(store / "legacy")]))
    assert str(store / "legacy") in err and "inside the store" in err
    assert snapshot(store) == before


def test_synthetic_stores_replace_only_stores(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="not a broden store"):
        random_store(target, n_images=4, image_size=16, n_objects=2, n_parts=1,
                     n_materials=1, n_scenes=1, n_textures=1, shard_size=4)  # fmt: skip
    assert (target / "keep.txt").read_text() == "x"
