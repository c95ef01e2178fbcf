"""`broden dissect` from the command line: the summary line, and one clear message with
exit status 2 for every input error a user can make (DESIGN.md §6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect.synthetic import write_store
from tests.dissect_helpers import TinyStore, random_labels_store

runner = CliRunner()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("cli") / "tiny.zarr")


def run(*args: str | Path):
    return runner.invoke(app, ["dissect", *map(str, args)])


def fails_with(result, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ")
    assert "Traceback" not in result.output
    for p in phrases:
        assert p in result.output, result.output


def test_activations_from_the_command_line(tiny, tmp_path):
    acts = np.random.default_rng(0).normal(size=(tiny.n, 4, 5, 5)).astype(np.float32)
    np.save(tmp_path / "conv5.npy", acts)
    out = tmp_path / "out"
    r = run(
        tiny.path,
        "--activations",
        tmp_path / "conv5.npy",
        "--out",
        out,
        "--quantile",
        "0.1",
        "--legacy-csv",
        "-q",
    )
    assert r.exit_code == 0, r.output
    assert "conv5: " in r.output and " of 4 units are detectors of " in r.output
    assert (out / "conv5" / "tally.csv").is_file()
    again = run(
        tiny.path, "--activations", tmp_path / "conv5.npy", "--out", out, "--quantile", "0.1", "-q"
    )
    assert again.exit_code == 0 and "reused the counts cached" in again.output


def test_unknown_layer_lists_close_names(tiny, tmp_path):
    r = run(tiny.path, "--model", "dissect.zoo:resnet18", "--layer", "layer5", "--out", tmp_path)
    fails_with(r, "no layer 'layer5'", "layer4")
    r = run(
        tiny.path, "--model", "dissect.zoo:resnet18", "--layer", "layer4.1.cnv2", "--out", tmp_path
    )
    fails_with(r, "layer4.1.conv2")


def test_model_that_does_not_load(tiny, tmp_path):
    fails_with(
        run(tiny.path, "--model", "no_such_module:net", "--layer", "x", "--out", tmp_path),
        "cannot import module 'no_such_module'",
    )
    fails_with(
        run(tiny.path, "--model", "dissect.zoo:resnet99", "--layer", "x", "--out", tmp_path),
        "has no callable 'resnet99'",
    )
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    fails_with(
        run(
            tiny.path,
            "--model",
            "dissect.zoo:resnet18",
            "--weights",
            bad,
            "--layer",
            "layer4",
            "--out",
            tmp_path,
        ),
        "--weights",
        "state dict",
    )


def test_wrong_number_of_images(tiny, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((tiny.n + 1, 2, 3, 3), np.float32))
    fails_with(
        run(tiny.path, "--activations", tmp_path / "a.npy", "--out", tmp_path),
        f"hold {tiny.n + 1} images",
        f"has {tiny.n}",
    )


def test_non_finite_activations_name_the_units(tiny, tmp_path):
    acts = np.random.default_rng(1).normal(size=(tiny.n, 6, 3, 3)).astype(np.float32)
    acts[4, 1, 0, 2] = np.nan
    acts[3, 5, 1, 1] = np.inf  # the same batch (shards of 5 images)
    np.save(tmp_path / "a.npy", acts)
    fails_with(
        run(tiny.path, "--activations", tmp_path / "a.npy", "--out", tmp_path, "-q"),
        "not finite",
        "units [1, 5]",
        "image 3",
    )


def test_incomplete_store(tiny, tmp_path):
    path = write_store(
        tmp_path / "half.zarr",
        tiny.images,
        tiny.pixel,
        tiny.image_labels,
        tiny.concepts,
        complete=False,
    )
    np.save(tmp_path / "a.npy", np.zeros((tiny.n, 2, 3, 3), np.float32))
    fails_with(run(path, "--activations", tmp_path / "a.npy", "--out", tmp_path), "incomplete")
    fails_with(
        run(tmp_path / "nothing.zarr", "--activations", tmp_path / "a.npy", "--out", tmp_path),
        "no such store",
    )


def test_unknown_concepts_are_listed(tiny, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((tiny.n, 2, 3, 3), np.float32))
    names = tmp_path / "concepts.txt"
    names.write_text("obj1\n# a comment\nunicorn\nscene\n")
    r = run(
        tiny.path,
        "--activations",
        tmp_path / "a.npy",
        "--out",
        tmp_path,
        "--concepts",
        names,
        "--concepts",
        "obj9,part1",
    )
    fails_with(r, "unknown concepts or categories", "'unicorn'", "'obj9'")
    assert "part1" not in r.output.split("categories:")[1].split(";")[0]


def test_bad_option_values(tiny, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((tiny.n, 2, 3, 3), np.float32))
    a = tmp_path / "a.npy"
    fails_with(
        run(tiny.path, "--activations", a, "--out", tmp_path, "--unit-area", "paper"),
        "unknown --unit-area 'paper'",
    )
    fails_with(
        run(tiny.path, "--activations", a, "--out", tmp_path, "--quantile", "1.5"),
        "--quantile must lie in (0, 1)",
    )
    np.save(tmp_path / "thr.npy", np.zeros(3))
    fails_with(
        run(tiny.path, "--activations", a, "--out", tmp_path, "--thresholds", tmp_path / "thr.npy"),
        "3 thresholds for a layer of 2 units",
    )
    fails_with(run(tiny.path, "--out", tmp_path), "give --model")


@pytest.mark.skipif(_cuda(), reason="a CUDA device is present")
def test_cuda_requested_without_a_device(tiny, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((tiny.n, 2, 3, 3), np.float32))
    fails_with(
        run(tiny.path, "--activations", tmp_path / "a.npy", "--out", tmp_path, "--device", "cuda"),
        "no CUDA device is available",
    )


def test_missing_torchvision_gets_a_way_out(tiny, tmp_path):
    try:
        import torchvision  # noqa: F401

        pytest.skip("torchvision is importable here")
    except Exception:
        pass
    r = run(tiny.path, "--model", "torchvision:resnet18", "--layer", "layer4", "--out", tmp_path)
    fails_with(r, "torchvision is not importable", "dissect.zoo:resnet18")


def test_importing_dissect_does_not_import_torch():
    code = (
        "import sys, broden.dissect, broden.dissect.cli, broden.dissect.report, "
        "broden.dissect.experiments, broden.dissect.settings, broden.dissect.summary; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "from broden.cli import app; "
        "assert 'torch' not in sys.modules, 'torch imported by the CLI'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_damaged_shard_is_one_message_even_from_a_worker(tiny, tmp_path, workers):
    import shutil

    path = tmp_path / "damaged.zarr"
    shutil.copytree(tiny.path, path)
    shard = next(p for p in sorted((path / "pixel" / "object").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")  # fmt: skip
    shard.write_bytes(b"\x00garbage" * 10)
    np.save(tmp_path / "a.npy", np.zeros((tiny.n, 2, 3, 3), np.float32))
    r = run(path, "--activations", tmp_path / "a.npy", "--out", tmp_path / "o", "--workers",
            str(workers), "-q")  # fmt: skip
    fails_with(r, "cannot read images 0-4", "broden validate")
    assert "Original Traceback" not in r.output


def test_out_of_memory_suggests_a_smaller_batch(tiny, tmp_path, monkeypatch):
    import torch

    from broden.dissect import tally

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tally.Tally, "add", boom)
    np.save(tmp_path / "a.npy", np.zeros((tiny.n, 2, 3, 3), np.float32))
    r = run(tiny.path, "--activations", tmp_path / "a.npy", "--out", tmp_path, "--batch-size",
            "8", "-q")  # fmt: skip
    fails_with(r, "out of memory", "--batch-size 8", "try --batch-size 4")


def test_two_stores_into_one_out_each_get_their_report(tiny, tmp_path):
    """A second store dissected into the same --out: its report covers the layers it wrote
    (the first store's layers there belong to another store)."""
    other = random_labels_store(tmp_path / "other.zarr", n=8, seed=3)
    out = tmp_path / "out"
    for store, name in ((tiny, "a"), (other, "b")):
        acts = np.random.default_rng(0).normal(size=(store.n, 3, 4, 4)).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", acts)
        r = run(store.path, "--activations", tmp_path / f"{name}.npy", "--out", out, "-q")
        assert r.exit_code == 0, r.output
        assert "report: " in r.output
    page = (out / "report.html").read_text()
    assert 'data-layer="b"' in page or ">b<" in page
    r = runner.invoke(app, ["report", str(out), "-q"])  # each layer with its own store
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(out), "--store", str(other.path), "-q"])
    fails_with(r, "layer a: the store", "is not the one dissected")
    r = runner.invoke(app, ["report", str(out), "--layer", "b", "--store", str(other.path), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(out), "--layer", "c"])
    fails_with(r, "has no dissected layer 'c'")


def test_a_factory_in_the_current_folder(tiny, tmp_path, monkeypatch):
    """`--model mynet:build` imports mynet.py from the folder broden runs in, as python -m."""
    (tmp_path / "mynet_for_broden_test.py").write_text(
        "import torch.nn as nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU())\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    r = run(tiny.path, "--model", "mynet_for_broden_test:build", "--layer", "1", "--out", "o",
            "--workers", "0", "--no-report", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "1: " in r.output and " of 4 units are detectors" in r.output
    sys.modules.pop("mynet_for_broden_test", None)
