"""One writer at a time, and nothing half-done taken for done: a second build, add or
upgrade of a store being written fails at once naming the writer's PID; ``kill -9`` leaves
no lock to clear; a staged task whose arrays are not whole is prepared again; a store that
says it is complete but is not (a staging folder left, a damaged shard) is finished or
rebuilt by the next build, never reported up to date."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from broden import add, build
from broden.build import staging_path
from broden.cli import app
from broden.config import load_config
from broden.errors import StoreError
from broden.store import STORE_ATTR, BrodenStore, upgrade_store, validate_store
from broden.store.lock import lock_path, store_lock
from tests.conftest import SAMPLES
from tests.store_helpers import assert_stores_equal

REPO = SAMPLES.parent
CONFIG = SAMPLES / "broden-sample.yaml"
runner = CliRunner()

#: ``broden ARGS...`` whose first prepare task waits until the file GATE exists (after
#: touching READY): a writer that holds its store's lock for as long as the test wants
GATED = """
import sys, time
from pathlib import Path
from broden.build import phases
real = phases.run_prepare_task
ready, gate = Path(sys.argv[1]), Path(sys.argv[2])
def gated(task):
    ready.touch()
    while not gate.exists():
        time.sleep(0.01)
    return real(task)
phases.run_prepare_task = gated
from broden.cli import app
app(sys.argv[3:], prog_name="broden")
"""


def start_gated(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``broden ARGS`` in a subprocess, held inside its first task; (process, gate)."""
    script = tmp_path / "gated.py"
    script.write_text(GATED)
    ready, gate = tmp_path / "ready", tmp_path / "gate"
    cmd = [sys.executable, str(script), str(ready), str(gate), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the gated command never reached its first task"
        time.sleep(0.02)
    return proc, gate


def broden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broden", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def assert_refused_by(r: subprocess.CompletedProcess[str], store: Path, pid: int) -> None:
    """One error line naming the store and the PID holding it; exit 2; no traceback."""
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {store} is being written by another process (PID {pid},")


def same_arrays(a: Path, b: Path) -> None:
    """The two stores hold equal arrays (with their digests) and concept tables."""
    sa, sb = BrodenStore(a), BrodenStore(b)
    assert sa.concepts == sb.concepts and sa.array_names() == sb.array_names()
    for name in sa.array_names():
        assert np.array_equal(np.asarray(sa.array(name)[:]), np.asarray(sb.array(name)[:])), name
        assert sa.array(name).attrs["shard_digests"] == sb.array(name).attrs["shard_digests"]


# -- one writer at a time --------------------------------------------------------------------


def test_two_builds_racing_into_one_store(sample_store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "raced.zarr"
    first, gate = start_gated(tmp_path, "build", str(CONFIG), "--out", str(out), "-q")
    try:
        t0 = time.monotonic()
        second = broden("build", str(CONFIG), "--out", str(out), "-q")
        assert_refused_by(second, out, first.pid)
        assert time.monotonic() - t0 < 60  # at once: the first is still waiting at its gate
        assert lock_path(out).read_text().split() == [str(first.pid)]
    finally:
        gate.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    assert not lock_path(out).exists()  # a finished writer removes its lock file
    assert_stores_equal(sample_store_path, out)


def _dtd_more(tmp_path: Path) -> Path:
    cfg = tmp_path / "more.yaml"
    cfg.write_text(json.dumps({"min_frequency": 1, "min_coverage": 0.0, "task_size": 4,
                               "sources": [{"adapter": "dtd", "name": "dtd_more",
                                            "root": str(SAMPLES / "dtd")}]}))  # fmt: skip
    return cfg


def test_two_adds_racing_into_one_store(sample_store_path: Path, tmp_path: Path) -> None:
    cfg = _dtd_more(tmp_path)
    reference = tmp_path / "reference.zarr"
    shutil.copytree(sample_store_path, reference)
    add(reference, load_config(cfg), progress=False)
    out = tmp_path / "raced.zarr"
    shutil.copytree(sample_store_path, out)
    first, gate = start_gated(tmp_path, "add", str(out), str(cfg), "-q")
    try:
        second = broden("add", str(out), str(cfg), "-q")
        assert_refused_by(second, out, first.pid)
        build_too = broden("build", str(CONFIG), "--out", str(out), "-q")
        assert_refused_by(build_too, out, first.pid)
    finally:
        gate.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    same_arrays(reference, out)
    assert validate_store(out) == []


def test_a_held_lock_refuses_add_and_upgrade_in_this_process(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(sample_store_path, out)
    with store_lock(out):
        r = runner.invoke(app, ["add", str(out), str(_dtd_more(tmp_path)), "-q"])
        assert r.exit_code == 2
        assert r.stderr.startswith(f"error: {out} is being written by another process "
                                   f"(PID {os.getpid()},")  # fmt: skip
        assert r.stderr.count("\n") == 1
        with pytest.raises(StoreError, match=f"PID {os.getpid()}"):
            upgrade_store(out)
    assert upgrade_store(out) == [] and not lock_path(out).exists()
    assert_stores_equal(sample_store_path, out)  # untouched


def test_a_killed_build_leaves_no_lock_behind(sample_store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed.zarr"
    first, _ = start_gated(tmp_path, "build", str(CONFIG), "--out", str(out), "-q")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert lock_path(out).read_text().split() == [str(first.pid)]  # its file, unlocked
    again = broden("build", str(CONFIG), "--out", str(out), "-q")
    assert again.returncode == 0, again.stderr
    assert not lock_path(out).exists()
    assert_stores_equal(sample_store_path, out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_add_into_a_read_only_store_is_one_error_line(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ro.zarr"
    shutil.copytree(sample_store_path, out)
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    for d in folders:
        d.chmod(0o555)
    try:
        r = runner.invoke(app, ["add", str(out), str(_dtd_more(tmp_path)), "-q"])
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
        assert r.stderr.startswith(f"error: {out} is read-only")
        assert not staging_path(out).exists() and not (tmp_path / "ro.zarr.add").exists()
    finally:
        for d in folders:
            d.chmod(0o755)
    assert_stores_equal(sample_store_path, out)


# -- nothing half-done taken for done --------------------------------------------------------


def _interrupted(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, after: int) -> None:
    """Make ``module.name`` raise KeyboardInterrupt (as if killed) once it ran ``after``
    times; calls before that run for real."""
    real = getattr(module, name)
    calls = {"n": 0}

    def dies(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(module, name, dies)


def test_a_staged_task_whose_arrays_are_not_whole_is_prepared_again(
    sample_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broden.build import phases

    out = tmp_path / "s.zarr"
    cfg = load_config(CONFIG)
    with monkeypatch.context() as m:
        _interrupted(m, phases, "run_prepare_task", after=4)
        with pytest.raises(KeyboardInterrupt):
            build(cfg, out, progress=False)
    tasks = staging_path(out) / "tasks"
    assert sorted(p.name for p in tasks.glob("*.json")) == [f"{t:05d}.json" for t in range(4)]
    chunks = [sorted(f for f in (tasks / f"{t:05d}.zarr" / "images").rglob("*") if f.is_file()
                     and f.name != "zarr.json") for t in range(3)]  # fmt: skip
    chunks[0][0].unlink()  # missing: zarr would read zeros
    data = chunks[1][0].read_bytes()
    chunks[1][0].write_bytes(data[: len(data) // 2])  # truncated
    data = bytearray(chunks[2][-1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    chunks[2][-1].write_bytes(bytes(data))
    summary = build(cfg, out, progress=False)
    assert summary.reused_tasks == 1  # task 3 only
    assert_stores_equal(sample_store_path, out)


def _mark_complete(out: Path) -> None:
    g = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    attrs = dict(g.attrs[STORE_ATTR])  # type: ignore[arg-type]
    g.attrs[STORE_ATTR] = {**attrs, "complete": True}


def _first_chunk(array: Path) -> Path:
    return next(f for f in sorted((array / "c").rglob("*")) if f.is_file())


def test_complete_attrs_with_a_staging_folder_left_are_finished(
    sample_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_module = sys.modules["broden.build"]  # the package (``broden.build`` is the function)
    out = tmp_path / "s.zarr"
    cfg = load_config(CONFIG)
    with monkeypatch.context() as m:  # killed once the one shard is written and recorded
        _interrupted(m, build_module, "_finalize", after=0)
        with pytest.raises(KeyboardInterrupt):
            build(cfg, out, progress=False)
    assert (staging_path(out) / "written" / "00000.json").exists()
    _first_chunk(out / "images").unlink()  # the shard recorded as written is gone
    _mark_complete(out)  # and the attributes claim the store is finished
    summary = build(cfg, out, progress=False)
    assert not summary.up_to_date
    assert any("staging folder" in n for n in summary.notes)
    assert not staging_path(out).exists()
    assert_stores_equal(sample_store_path, out)
    assert validate_store(out) == []


@pytest.mark.parametrize("damage", ["flipped", "deleted"])
def test_complete_attrs_over_a_damaged_shard_are_rebuilt(
    damage: str, sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.zarr"
    shutil.copytree(sample_store_path, out)
    shard = _first_chunk(out / ("images" if damage == "flipped" else "pixel/object"))
    if damage == "flipped":
        data = bytearray(shard.read_bytes())
        data[len(data) // 3] ^= 0x55
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    assert validate_store(out) != []
    r = runner.invoke(app, ["build", str(CONFIG), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "nothing to do" not in r.stdout and "did not hold their recorded digests" in r.stdout
    assert_stores_equal(sample_store_path, out)
    assert validate_store(out) == []
    assert build(load_config(CONFIG), out, progress=False).up_to_date  # now it is
