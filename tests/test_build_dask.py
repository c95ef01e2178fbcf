"""Builds on a Dask cluster (``--dask local:N``): the same store as one worker, also when a
worker process dies in the middle of the build."""

from __future__ import annotations

from pathlib import Path

import pytest

from broden.build import BuildError, build, staging_path
from broden.build.runners import KILL_WORKER_ONCE_ENV
from broden.config import parse_config
from tests.store_helpers import assert_groups_equal
from tests.test_build import sample_config

pytest.importorskip("distributed")


def test_a_2_process_dask_local_cluster_build_equals_the_1_worker_build_array_by_array(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dask.zarr"
    summary = build(parse_config(sample_config()), out, dask="local:2", progress=False)
    assert summary.images == 26 and not summary.skipped
    assert not staging_path(out).exists()
    assert_groups_equal(sample_store_path, out)  # sample_store_path: built by one worker


@pytest.mark.parametrize("workers", [2, 1])
def test_a_dask_worker_killed_midway_is_replaced_and_the_store_is_the_same(
    workers: int, sample_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first task to start kills its worker process (SIGKILL); the nanny starts a new
    # one and the scheduler runs the lost tasks again. With one worker, the build context
    # scattered to the cluster dies with it and is sent again.
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_WORKER_ONCE_ENV, str(marker))
    out = tmp_path / "dask.zarr"
    summary = build(parse_config(sample_config()), out, dask=f"local:{workers}", progress=False)
    assert marker.exists(), "no worker was killed"
    assert summary.images == 26 and not summary.skipped
    assert_groups_equal(sample_store_path, out)


def test_a_task_whose_workers_all_died_is_a_clear_error_and_the_build_resumes(
    sample_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask.config

    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_WORKER_ONCE_ENV, str(marker))
    out = tmp_path / "dask.zarr"
    cfg = parse_config(sample_config())
    # no retry allowed: the first lost worker makes its task a KilledWorker
    no_retry = dask.config.set({"distributed.scheduler.allowed-failures": 0})
    died = r"worker process died.*run the same command again"
    with no_retry, pytest.raises(BuildError, match=died) as e:
        build(cfg, out, dask="local:2", progress=False)
    assert "allowed-failures is 0" in str(e.value)
    assert marker.exists()
    assert staging_path(out).exists()
    summary = build(cfg, out, dask="local:2", progress=False)  # marker there: no more kills
    assert summary.images == 26
    assert_groups_equal(sample_store_path, out)


def test_a_malformed_dask_address_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="--dask 'local:two': expected ADDRESS or local:N"):
        build(parse_config(sample_config()), tmp_path / "x.zarr", dask="local:two",
              progress=False)  # fmt: skip
