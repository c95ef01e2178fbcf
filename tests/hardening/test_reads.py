"""Reading is verified: a dissection checks every shard it reads against the digest the
store recorded when it was written, the first time it reads it, and a missing, altered
or undecodable shard stops it with one ``error:`` line naming the array and the shard
(issue 12, item 4). Stores are copied into tmp_path before they are tampered with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from numcodecs import Zstd
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect import score_activations
from broden.dissect.data import StoreBatches, batch_plan, check_batches, iterate
from broden.dissect.settings import DissectSettings
from broden.errors import StoreError
from broden.store import DIGESTS_ATTR, open_store
from broden.store import verified as verified_module
from tests.dissect_helpers import TinyStore, random_labels_store, reference

runner = CliRunner()
PAINTED = "tests.experiment_helpers:painted_net"


def one_error_line(result, *phrases: str) -> str:
    """The command failed with exit status 2 and printed exactly one ``error:`` line
    holding every phrase."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def dissect_cli(store: Path, out: Path, *args: str | Path):
    return runner.invoke(app, ["dissect", str(store), "--out", str(out), "-q", "--no-report",
                               *map(str, args)])  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyStore:
    """12 images in shards of 5 (images 0-4, 5-9, 10-11)."""
    return random_labels_store(tmp_path_factory.mktemp("reads") / "tiny.zarr")


@pytest.fixture
def sample(sample_store_path: Path, tmp_path: Path) -> Path:
    """A writable copy of the session's sample store (26 real images, one shard)."""
    dst = tmp_path / "sample.zarr"
    shutil.copytree(sample_store_path, dst)
    return dst


def acts_for(store: Path, tmp_path: Path, units: int = 3) -> Path:
    n = len(open_store(store))
    acts = np.random.default_rng(0).normal(size=(n, units, 4, 4)).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    return tmp_path / "acts.npy"


def inner_chunk(shard_file: Path, rows: int, row: int = 0) -> tuple[int, int]:
    """(offset, nbytes) of inner chunk ``row`` of a shard file (the Zarr v3 sharding
    index at the end: ``rows`` pairs of uint64, then a crc32c)."""
    raw = shard_file.read_bytes()
    index = np.frombuffer(raw[-(rows * 16 + 4) : -4], "<u8").reshape(rows, 2)
    return int(index[row, 0]), int(index[row, 1])


def strip_digests(path: Path) -> None:
    """Make ``path`` a store as written before shards had digests."""
    store = open_store(path)
    for name in store.array_names():
        arr = zarr.open_array(str(path / name), mode="r+")
        del arr.attrs[DIGESTS_ATTR]
    root = json.loads((path / "zarr.json").read_text())
    root.pop("consolidated_metadata", None)  # it would still list the digests
    (path / "zarr.json").write_text(json.dumps(root))


# -- a missing, altered or undecodable shard: one line naming the array and shard ----------


@pytest.mark.parametrize("workers", ["0", "1"])
def test_deleted_shard_file_stops_the_dissection(sample, tmp_path, workers):
    (sample / "pixel" / "object" / "c" / "0" / "0" / "0" / "0").unlink()
    r = dissect_cli(sample, tmp_path / "out", "--activations", acts_for(sample, tmp_path),
                    "--workers", workers)  # fmt: skip
    one_error_line(r, "pixel/object shard 0 (images 0-25)", "pixel/object/c/0/0/0/0 is missing")
    assert not (tmp_path / "out" / "acts" / "summary.json").exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_shard_rewritten_with_other_values_is_a_digest_mismatch(tiny, tmp_path, workers):
    path = tmp_path / "tiny.zarr"
    shutil.copytree(tiny.path, path)
    arr = zarr.open_array(str(path / "pixel" / "object"), mode="r+")
    arr[5:10] = np.where(tiny.pixel["object"][5:10] == 10, 11, tiny.pixel["object"][5:10])
    r = dissect_cli(path, tmp_path / "out", "--activations", acts_for(path, tmp_path),
                    "--workers", workers)  # fmt: skip
    one_error_line(
        r, "pixel/object shard 1 (images 5-9)", "differs from the digest recorded", "validate"
    )


@pytest.mark.parametrize("workers", ["0", "1"])
def test_flipped_byte_that_still_decodes_is_a_digest_mismatch(sample, tmp_path, workers):
    shard = sample / "images" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    offset, nbytes = inner_chunk(shard, 26, row=3)
    clean = Zstd().decode(bytes(raw[offset : offset + nbytes]))
    for at in range(offset + nbytes // 2, offset + nbytes):  # a literal byte: decodes, differs
        raw[at] ^= 0x10
        try:
            if Zstd().decode(bytes(raw[offset : offset + nbytes])) != clean:
                break
        except RuntimeError:
            pass
        raw[at] ^= 0x10
    else:
        pytest.fail("no byte of the chunk flips into other content that still decodes")
    shard.write_bytes(bytes(raw))
    r = dissect_cli(sample, tmp_path / "out", "--model", PAINTED, "--layer", "mix",
                    "--normalize", "none", "--workers", workers)  # fmt: skip
    one_error_line(r, "images shard 0 (images 0-25)", "differs from the digest recorded")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_chunk_that_does_not_decode_names_the_array_and_shard(sample, tmp_path, workers):
    shard = sample / "pixel" / "color" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    offset, _ = inner_chunk(shard, 26, row=7)
    raw[offset : offset + 4] = b"\x00\x00\x00\x00"  # no zstd frame any more
    shard.write_bytes(bytes(raw))
    r = dissect_cli(sample, tmp_path / "out", "--activations", acts_for(sample, tmp_path),
                    "--workers", workers)  # fmt: skip
    one_error_line(r, "cannot read images 0-25 of pixel/color (shard 0)", "does not decode")


def test_truncated_shard_file_names_the_array_and_shard(sample, tmp_path):
    shard = sample / "pixel" / "part" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    r = dissect_cli(sample, tmp_path / "out", "--activations", acts_for(sample, tmp_path))
    line = one_error_line(r, "pixel/part", "shard 0", "images 0-25")
    assert "does not decode" in line or "differs from the digest" in line


def test_damaged_metadata_array_is_named(tiny, tmp_path):
    path = tmp_path / "tiny.zarr"
    shutil.copytree(tiny.path, path)
    arr = zarr.open_array(str(path / "image" / "scene"), mode="r+")
    arr[10:12] = np.where(tiny.image_labels["scene"][10:12] == 15, 16, 15)  # read whole
    r = dissect_cli(path, tmp_path / "out", "--activations", acts_for(path, tmp_path))
    one_error_line(r, "image/scene shard 2 (images 10-11)", "differs from the digest")


def test_the_data_loader_raises_one_store_error(tiny, tmp_path):
    path = tmp_path / "tiny.zarr"
    shutil.copytree(tiny.path, path)
    zarr.open_array(str(path / "pixel" / "part"), mode="r+")[0:5] = 0
    store = open_store(path)
    with pytest.raises(StoreError) as got:
        for _ in iterate(StoreBatches(store, 4, images=False), 1, torch.device("cpu")):
            pass
    message = str(got.value)
    assert "pixel/part shard 0 (images 0-4)" in message
    assert "\n" not in message and "Traceback" not in message


# -- an intact store: the same results, each shard checked once ------------------------------


def test_intact_store_dissects_exactly_as_before(tiny, tmp_path):
    """Verified reads give the counts of unverified ones (a store without digests, which
    reads without an error) and of the reference implementation, with 0 and 1 workers."""
    acts = np.random.default_rng(3).normal(size=(tiny.n, 5, 4, 4)).astype(np.float32)
    old = tmp_path / "old.zarr"
    shutil.copytree(tiny.path, old)
    strip_digests(old)
    s = DissectSettings(quantile=0.1, progress=False)
    plain = score_activations(old, acts, "l", s.replace(workers=0), out=tmp_path / "old")
    ref = reference(tiny, acts, quantile=0.1)
    for workers in (0, 1):
        res = score_activations(
            tiny.path, acts, "l", s.replace(workers=workers), out=tmp_path / f"w{workers}"
        )
        np.testing.assert_array_equal(res.iou, plain.iou)
        np.testing.assert_array_equal(res.thresholds, plain.thresholds)
        np.testing.assert_allclose(res.iou, ref.iou["original"], atol=1e-12)
    assert res.summary.store.fingerprint != plain.summary.store.fingerprint  # other digests


def test_each_shard_is_checked_once_over_both_passes(tiny, tmp_path, monkeypatch):
    calls: list[tuple[tuple[int, ...], str]] = []
    matches = verified_module.digest_matches

    def counted(data: np.ndarray, recorded: str) -> bool:
        calls.append((data.shape, str(data.dtype)))
        return matches(data, recorded)

    monkeypatch.setattr(verified_module, "digest_matches", counted)
    store = open_store(tiny.path)
    acts = np.random.default_rng(4).normal(size=(tiny.n, 2, 3, 3)).astype(np.float32)
    res = score_activations(store, acts, "l", DissectSettings(batch_size=2, workers=0,
                            progress=False), out=tmp_path / "o")  # fmt: skip
    assert res.summary.settings.passes == 2
    read = [n for n in store.array_names() if n != "images"]  # activations: no images read
    assert store.checked_shards == {(n, j) for n in read for j in range(3)}
    assert len(calls) == len(read) * 3  # once each, though each shard is read in 2 passes


def test_workers_report_the_shards_they_checked(tiny):
    store = open_store(tiny.path)
    for _ in iterate(StoreBatches(store, 2, images=True), 1, torch.device("cpu")):
        pass
    assert store.checked_shards == {(n, j) for n in store.array_names() for j in range(3)}


def test_checks_are_shared_out_among_the_workers(tiny):
    """Each shard is checked by one batch: the first, or with W workers (handed the
    batches in turn) the one falling to worker shard % W, where the shard has one."""
    store = open_store(tiny.path)
    plan = batch_plan(store, 1)  # shards of 5, 5 and 2 batches: items 0-4, 5-9, 10-11
    assert check_batches(plan, store.shard_size) == {0, 5, 10}
    assert check_batches(plan, store.shard_size, spread=3) == {0, 7, 11}  # workers 0, 1, 2
    # 5 workers: shard 2 has no batch for worker 2 (items 10, 11 go to 0, 1): its first
    assert check_batches(plan, store.shard_size, spread=5) == {0, 6, 10}


def test_stores_with_the_older_blake2b_digests_are_still_verified(sample: Path) -> None:
    """Stores of earlier versions record blake2b digests (32 hex digits, no ``xxh3:``):
    their shards are checked against those, and a wrong one is still found."""
    from broden.store import validate_store
    from broden.store.layout import XXH3, legacy_digest, shard_rows
    from broden.store.metadata import consolidate

    store = open_store(sample)
    for name in store.array_names():
        arr = zarr.open_array(str(sample / name), mode="r+")
        assert all(d.startswith(XXH3) for d in arr.attrs[DIGESTS_ATTR])
        shards = len(arr.attrs[DIGESTS_ATTR])
        old = []
        for j in range(shards):
            a, b = shard_rows(j, len(store), store.shard_size)
            old.append(legacy_digest(store.rows(name, a, b)))
        arr.attrs[DIGESTS_ATTR] = old
    consolidate(sample)  # as that version left the store
    assert validate_store(sample) == []
    reread = open_store(sample)
    verified_module.ShardVerifier(reread).read_block(0, len(reread), check=True)
    assert ("images", 0) in reread.checked_shards
    arr = zarr.open_array(str(sample / "images"), mode="r+")
    arr.attrs[DIGESTS_ATTR] = ["0" * 32] * len(arr.attrs[DIGESTS_ATTR])
    consolidate(sample)
    problems = validate_store(sample)
    assert len(problems) == 1 and "images shard 0" in problems[0], problems
    with pytest.raises(StoreError, match="images shard 0"):
        verified_module.ShardVerifier(open_store(sample)).read_block(0, 4, check=True)
