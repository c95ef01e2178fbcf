"""``--distributed``: a ``torchrun`` launch of 2 CPU ranks (gloo) writes exactly the files
of a single process, for unequal parts, a rank without images, both quantile methods,
one or two forward passes, given thresholds, a source selection, precomputed
activations and cached results; ranks other than 0 write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from broden.dissect import DissectError, dissect, score_activations
from broden.dissect.distributed import split_shards
from broden.dissect.settings import DissectSettings as S
from broden.dissect.synthetic import write_store
from tests.dissect_helpers import random_labels_store

REPO = Path(__file__).resolve().parent.parent
FILES = ("iou.npy", "thresholds.npy", "units.csv", "counts.npz", "topk.npz", "concepts.csv")
FILES += ("topmaps.npy",)  # the maps of the report's top images
MODEL = "dissect.zoo:resnet18"


@contextmanager
def one_thread() -> Iterator[None]:
    """The single-process references run with the ranks' one thread per process."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def torchrun(*args: str | Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


def same_files(a: Path, b: Path) -> None:
    for f in FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{a / f} differs from {b / f}"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dist")
    # 12 images in shards of 5, 5, 2: rank 0 gets 5 images, rank 1 gets 7
    uneven = random_labels_store(d / "uneven.zarr", n=12, shard_size=5).path
    # one shard: rank 0 (the one that writes) gets no image at all
    single = random_labels_store(d / "single.zarr", n=9, shard_size=16, seed=1).path
    ts = random_labels_store(d / "base.zarr", n=14, seed=2)
    names = ["new" if i % 3 == 1 else "old" for i in range(14)]
    two = write_store(
        d / "two.zarr", ts.images, ts.pixel, ts.image_labels, ts.concepts, 4, sources=names
    )
    return {"uneven": uneven, "single": single, "two": two}


def test_parts_are_whole_shards_in_order():
    images = np.array([0, 1, 4, 5, 6, 9, 10, 11, 12, 20, 21], np.int64)  # shards of 5
    for world in (1, 2, 3, 7):
        parts = split_shards(images, 5, world)
        assert len(parts) == world and np.array_equal(np.concatenate(parts), images)
        shards = [set((p // 5).tolist()) for p in parts]
        assert all(a.isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1 :])
    assert [len(p) for p in split_shards(images, 5, 2)] == [6, 5]
    assert sum(len(p) == 0 for p in split_shards(images, 5, 7)) == 3
    assert [len(p) for p in split_shards(np.arange(9), 16, 2)] == [0, 9]


def test_two_ranks_from_the_command_line_write_what_one_process_writes(stores, tmp_path):
    """`torchrun --nproc-per-node 2 $(which broden) dissect ... --distributed`, with the
    activations kept in memory, two layers and the report (rank 0's)."""
    args = ["--model", MODEL, "--layer", "layer1", "--layer", "layer2", "--quantile", "0.05"]
    args += ["--batch-size", "3", "--workers", "0", "--top-k", "3", "-q"]
    broden = Path(sys.executable).with_name("broden")
    launcher = [broden] if broden.is_file() else ["-m", "broden"]
    out = tmp_path / "dist"
    r = torchrun(*launcher, "dissect", stores["uneven"], "--out", out, *args, "--distributed")
    assert r.stdout.count("layer1: ") == 1 and r.stdout.count("report: ") == 1  # rank 0 only
    assert (out / "report.html").is_file()
    with one_thread():
        ref = dissect(
            stores["uneven"],
            MODEL,
            ["layer1", "layer2"],
            S(quantile=0.05, batch_size=3, workers=0, top_k=3, progress=False),
            out=tmp_path / "one",
        )
    for la in ref:
        same_files(out / la, tmp_path / "one" / la)
        s = json.loads((out / la / "summary.json").read_text())
        assert s["settings"]["distributed"] == {"world_size": 2, "backend": "gloo"}
        assert s["settings"]["passes"] == 1
        assert s["cache_key"] == ref[la].summary.cache_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "one"]


def test_two_ranks_of_the_library(stores, tmp_path):
    """Jobs run in one launch: a rank without images with two forward passes and the ndl
    quantile; activations of a source selection; given thresholds; a cached result."""
    acts = np.maximum(np.random.default_rng(0).normal(size=(14, 6, 5, 5)), 0).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    model_kw = dict(quantile=0.05, batch_size=4, workers=0, top_k=3, progress=False)
    one_kw = dict(model_kw, cache_activations="no", quantile_method="ndl")
    with one_thread():
        thr = dissect(stores["uneven"], MODEL, ["layer1"], S(**model_kw), out=tmp_path / "thr")
    jobs = [
        ("dissect", [str(stores["single"]), MODEL, ["layer1"]], one_kw, "b"),
        (
            "score_activations",
            [str(stores["two"]), str(tmp_path / "acts.npy")],
            dict(quantile=0.05, batch_size=3, sources="old", top_k=3, progress=False),
            "c",
        ),
        (
            "dissect",
            [str(stores["uneven"]), MODEL, ["layer1"]],
            dict(model_kw, thresholds=str(tmp_path / "thr")),
            "d",
        ),
        ("dissect", [str(stores["single"]), MODEL, ["layer1"]], one_kw, "b"),  # cached
    ]
    spec = [
        {"fn": fn, "args": a, "kwargs": dict(kw, out=str(tmp_path / "dist" / name))}
        for fn, a, kw, name in jobs
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(spec))
    (tmp_path / "got").mkdir()
    torchrun(
        REPO / "tests" / "dissect_distributed_worker.py", tmp_path / "jobs.json", tmp_path / "got"
    )
    with one_thread():
        for fn, a, kw, name in jobs[:3]:
            opts = dict(kw, progress=False)
            thresholds = opts.pop("thresholds", None)
            one = tmp_path / "one" / name
            if fn == "dissect":
                dissect(*a, S(**opts), out=one, thresholds=thresholds)  # type: ignore[misc]
            else:
                score_activations(*a, None, S(**opts), out=one)  # type: ignore[misc]
    for name, layer in (("b", "layer1"), ("c", "acts"), ("d", "layer1")):
        same_files(tmp_path / "dist" / name / layer, tmp_path / "one" / name / layer)
    s = json.loads((tmp_path / "dist" / "b" / "layer1" / "summary.json").read_text())
    assert s["reused"] and s["settings"]["cache_activations"] == "no"
    # every rank got the same results back; only rank 0 wrote
    for n in range(len(jobs)):
        with (
            np.load(tmp_path / "got" / f"rank0-{n}.npz") as a,
            np.load(tmp_path / "got" / f"rank1-{n}.npz") as b,
        ):
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["b", "c", "d"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "dist" / "d" / "layer1" / "thresholds.npy"), thr["layer1"].thresholds
    )


@pytest.fixture
def one_rank_env(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MASTER_PORT", str(port))
    yield
    from broden.dissect.distributed import shutdown

    shutdown()


def test_one_rank_is_a_single_process(stores, tmp_path, one_rank_env):
    s = S(quantile=0.05, batch_size=4, progress=False, quantile_method="ndl")
    acts = np.random.default_rng(3).normal(size=(12, 5, 4, 4)).astype(np.float32)
    one = score_activations(stores["uneven"], acts, None, s, out=tmp_path / "a")
    dist = score_activations(
        stores["uneven"], acts, None, s.replace(distributed=True), out=tmp_path / "b"
    )
    same_files(one.directory, dist.directory)
    assert dist.summary.settings.model_dump()["distributed"] == {"world_size": 1, "backend": "gloo"}
    assert one.summary.settings.distributed is None


def test_without_torchrun_the_message_says_how_to_launch(stores, tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    acts = np.zeros((12, 2, 3, 3), np.float32)
    with pytest.raises(DissectError, match=r"RANK, WORLD_SIZE.*are not set: launch with torchrun"):
        score_activations(
            stores["uneven"], acts, None, S(distributed=True, progress=False), out=tmp_path
        )
    assert not any(tmp_path.iterdir())
    from typer.testing import CliRunner

    from broden.cli import app

    np.save(tmp_path / "a.npy", acts)
    args = [str(stores["uneven"]), "--activations", str(tmp_path / "a.npy"), "--out", "o"]
    r = CliRunner().invoke(app, ["dissect", *args, "--distributed"])
    assert r.exit_code == 2, r.output
    assert "launch with torchrun, e.g. `torchrun --nproc-per-node 2 $(which broden)" in r.output


def test_python_m_broden_has_the_dissection_commands():
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "broden", "dissect", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--distributed" in r.stdout and "--sources" in r.stdout

    from typer.testing import CliRunner

    from broden.cli import app

    r = CliRunner().invoke(app, ["dissect", "--help"])
    assert r.exit_code == 0 and "--distributed" in r.output and "--sources" in r.output
    r = CliRunner().invoke(app, ["report", "--help"])
    assert r.exit_code == 0
