"""The build: deterministic, resumable, and honest about the samples it could not use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from broden.adapters import SourceError
from broden.build import BuildError, build, split_of, staging_path
from broden.config import ConfigError, load_config, parse_config
from broden.store import StoreError, open_store, validate_store
from tests.conftest import ADE_ROOT, ADE_STREET, SAMPLES, load_make_dtd
from tests.store_helpers import assert_stores_equal

REPO = SAMPLES.parent


def sample_config(**overrides: object) -> dict:
    cfg = yaml.safe_load((SAMPLES / "broden-sample.yaml").read_text())
    cfg["sources"] = [
        {"adapter": "ade20k", "root": str(ADE_ROOT)},
        {"adapter": "dtd", "root": str(SAMPLES / "dtd")},
    ]
    cfg.update(overrides)
    return cfg


def test_two_workers_build_the_same_store_as_one(sample_store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "two.zarr"
    summary = build(parse_config(sample_config()), out, workers=2, progress=False)
    assert summary.images == 26 and not summary.skipped
    assert not staging_path(out).exists()  # staging removed once complete
    assert_stores_equal(sample_store_path, out)


def test_other_shard_and_task_sizes_give_the_same_data(
    sample_store_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sharded.zarr"
    build(parse_config(sample_config(shard_size=4, task_size=3)), out, progress=False)
    a, b = open_store(sample_store_path), open_store(out)
    assert b.shard_size == 4 and a.concepts == b.concepts
    for name in a.array_names():
        assert np.array_equal(np.asarray(a.array(name)[:]), np.asarray(b.array(name)[:])), name
    assert validate_store(out) == []


def _worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmd:
            pids.append(pid)
    return pids


@pytest.mark.slow
def test_a_build_killed_midway_resumes_to_the_same_store(tmp_path: Path) -> None:
    dtd = tmp_path / "dtd"
    load_make_dtd().main(dtd, per_class=8)
    cfg = sample_config(task_size=2)
    cfg["sources"][1]["root"] = str(dtd)
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(cfg))
    reference = tmp_path / "reference.zarr"
    build(load_config(config), reference, progress=False)

    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "broden", "build", str(config), "--out", str(out),
           "--workers", "2", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tasks = staging_path(out) / "tasks"
    killed = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        done = len(list(tasks.glob("*.json"))) if tasks.exists() else 0
        workers = _worker_pids(proc.pid)
        if done >= 3 and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert killed is not None, "the build finished before a worker could be killed"
    assert proc.returncode == 2, err.decode()
    assert b"worker process died" in err and b"run the same command again" in err
    finished = len(list(tasks.glob("*.json")))
    assert 3 <= finished < 31  # some tasks done, not all
    with pytest.raises(StoreError):
        open_store(out)  # not there yet, or incomplete: never taken for a complete store

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resumed:" in again.stdout and "finished tasks reused" in again.stdout
    assert_stores_equal(reference, out)


def test_rebuilding_a_complete_store_is_a_no_op(sample_store_path: Path) -> None:
    summary = build(parse_config(sample_config()), sample_store_path, progress=False)
    assert summary.up_to_date and summary.images == 26


def test_a_complete_store_of_another_config_is_not_overwritten(
    sample_store_path: Path, tmp_path: Path
) -> None:
    with pytest.raises(BuildError, match="another config.*--overwrite"):
        build(parse_config(sample_config(min_frequency=2)), sample_store_path, progress=False)


def test_labels_under_the_thresholds_become_zero(tmp_path: Path) -> None:
    out = tmp_path / "thresholds.zarr"
    summary = build(parse_config(sample_config(min_frequency=2)), out, progress=False)
    store = open_store(out)
    names = {c.name for c in store.concepts}
    # umbrella and truck are in one ADE image only: dropped; car and building are in both
    assert "umbrella" not in names and "truck" not in names
    assert {"car", "building", "street-s"} <= names
    assert summary.dropped > 0
    dropped = {d.name for d in store.attrs.build_report.dropped}
    assert {"umbrella", "truck"} <= dropped
    # the umbrella's pixels are 0 in the store where the source says umbrella
    rgb = np.asarray(Image.open(ADE_STREET / "ADE_train_00016900_seg.png").convert("RGB"))
    classes = rgb[..., 0].astype(int) // 10 * 256 + rgb[..., 1]
    rows = np.floor(np.arange(112) * (1649 / 111) + 0.5).astype(int)
    cols = np.floor(np.arange(112) * (2199 / 111) + 0.5).astype(int)
    umbrella = classes[np.ix_(rows, cols)] == 2901
    assert umbrella.any()
    objects = store.sample(1).pixel["object"][0]
    assert (objects[umbrella] == 0).all() and (
        objects[~umbrella & (classes[np.ix_(rows, cols)] > 0)] > 0
    ).any()


# -- bad input -----------------------------------------------------------------------------


def test_bad_samples_are_skipped_and_listed(dtd_copy: Path, tmp_path: Path) -> None:
    bad = dtd_copy / "images" / "grid" / "grid_0002.jpg"
    bad.write_bytes(bad.read_bytes()[:600])  # truncated JPEG
    (dtd_copy / "images" / "striped" / "striped_0003.jpg").unlink()  # listed, missing
    cfg = {
        "min_frequency": 1,
        "min_coverage": 0,
        "sources": [{"adapter": "dtd", "root": str(dtd_copy)}],
    }
    out = tmp_path / "skips.zarr"
    summary = build(parse_config(cfg), out, progress=False)
    assert summary.images == 22
    reasons = {s.source_id: s.reason for s in summary.skipped}
    assert set(reasons) == {"grid/grid_0002.jpg", "striped/striped_0003.jpg"}
    assert "truncated" in reasons["grid/grid_0002.jpg"]
    assert "file is missing" in reasons["striped/striped_0003.jpg"]
    assert "grid/grid_0002.jpg" in summary.format()
    store = open_store(out)
    assert "grid/grid_0002.jpg" not in {store.sample(i).source_id for i in range(len(store))}
    assert [s.source_id for s in store.attrs.build_report.skipped] == sorted(reasons)


def test_strict_build_fails_on_the_first_bad_sample(dtd_copy: Path, tmp_path: Path) -> None:
    (dtd_copy / "images" / "striped" / "striped_0003.jpg").unlink()
    cfg = {"sources": [{"adapter": "dtd", "root": str(dtd_copy)}]}
    with pytest.raises(BuildError, match=r"--strict: sample dtd:striped/striped_0003\.jpg"):
        build(parse_config(cfg), tmp_path / "strict.zarr", strict=True, progress=False)


def test_a_mask_of_the_wrong_size_is_skipped_not_resized(ade_copy: Path, tmp_path: Path) -> None:
    seg = next(ade_copy.rglob("ADE_train_00016900_seg.png"))
    Image.open(seg).resize((512, 384), Image.Resampling.NEAREST).save(seg)
    cfg = {
        "min_frequency": 1,
        "min_coverage": 0,
        "sources": [{"adapter": "ade20k", "root": str(ade_copy)}],
    }
    summary = build(parse_config(cfg), tmp_path / "s.zarr", progress=False)
    assert summary.images == 1
    assert "mask is 512×384" in summary.skipped[0].reason


def test_missing_source_folder_fails_before_any_work(tmp_path: Path) -> None:
    cfg = {"sources": [{"adapter": "dtd", "root": str(tmp_path / "nope")}]}
    with pytest.raises(SourceError, match=r"source 'dtd': .*nope does not exist"):
        build(parse_config(cfg), tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sources: .*at least 1"):
        parse_config({"sources": []})
    with pytest.raises(ConfigError, match="image_sizee: Extra inputs"):
        parse_config({"image_sizee": 224, "sources": [{"adapter": "dtd", "root": "x"}]})
    with pytest.raises(SourceError, match="unknown adapter 'ade21k'; installed adapters: .*ade20k"):
        parse_config({"sources": [{"adapter": "ade21k", "root": "x"}]}).sources[0].make_adapter()
    with pytest.raises(SourceError, match="invalid config: colour: Extra inputs"):
        parse_config({"sources": [{"adapter": "dtd", "root": "x", "colour": 1}]}).sources[
            0
        ].make_adapter()
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [adapter: dtd\n")
    with pytest.raises(ConfigError, match="bad.yaml: cannot parse"):
        load_config(bad)


def test_config_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "b.toml"
    path.write_text('image_size = 64\n[[sources]]\nadapter = "dtd"\nroot = "../data/dtd"\n')
    cfg = load_config(path)
    assert cfg.image_size == 64 and cfg.label_size == 32
    assert cfg.sources[0].adapter_options()["root"] == str(tmp_path / "cfg" / "../data/dtd")


def test_split_rule_is_brodens_md5_rule() -> None:
    import hashlib
    import struct

    for sid in ["ADE_train_00000001.jpg", "x/y/2008_000652.jpg", "banded/banded_0002.jpg"]:
        name = "pascal/" + sid.rsplit("/", 1)[-1]
        (num,) = struct.unpack(">Q", hashlib.md5(name.encode()).digest()[:8])
        assert split_of("pascal", sid, {"train": 0.7, "val": 0.3}) == (
            "train" if num / 2**64 <= 0.7 else "val"
        )
    shares = [split_of("dtd", f"{i}.jpg", {"train": 0.7, "val": 0.3}) for i in range(2000)]
    assert 0.66 < shares.count("train") / 2000 < 0.74


def test_a_script_without_a_main_guard_gets_the_reason_its_workers_died(tmp_path: Path) -> None:
    """workers > 1 start spawned processes that import the calling script again; a script
    that builds at import time then kills them all, and the message says why."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from broden import build, load_config\n"
        "from broden.config import sample_config_path\n"
        "build(load_config(sample_config_path()), 'out.zarr', workers=2, progress=False)\n"
    )
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode != 0
    assert "a build worker process died" in r.stderr
    assert f"if {script} calls broden's build or add with workers > 1" in r.stderr
    assert 'if __name__ == "__main__":' in r.stderr
