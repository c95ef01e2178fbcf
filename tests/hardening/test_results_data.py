"""Results folders are data, not code (issue 12, item 2): `broden report`, `broden segment`,
`broden compare` and every reader of ``summary.json`` never import or call what a results
folder names. The report draws its masks from ``topmaps.npy`` (the maps `broden dissect`
saw, identical to a re-run of the model); `segment` runs only the model the user names,
checked against the recorded fingerprint; a damaged ``summary.json`` is one ``error:``
line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect.pipeline import dissect
from broden.dissect.report import read_layer, unit_masks, write_report
from broden.dissect.report.maps import GivenModel, ShownLayer, model_maps, saved_maps
from broden.dissect.settings import DissectSettings
from broden.store import open_store
from tests.test_report import MODEL, tiny_store

REPO = Path(__file__).resolve().parents[2]
EVIL = "evil_module:factory"
LAYERS = ("conv", "pool")

runner = CliRunner()


def _evil_code(marker: Path) -> str:
    return (
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "def factory():\n"
        f"    Path({str(marker)!r}).write_text('called')\n"
        "    import torch\n"
        "    return torch.nn.Identity()\n"
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny store, its conv and pool layers dissected with the report's tiny model)."""
    d = tmp_path_factory.mktemp("results")
    store, _ = tiny_store(d / "tiny.zarr")
    out = d / "out"
    dissect(store, MODEL, list(LAYERS), DissectSettings(quantile=0.02, progress=False), out=out)
    return store, out


def _tampered(results: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the results whose summaries name ``evil_module:factory``, with that module
    in the results folder, in each layer folder and in a folder on PYTHONPATH; returns
    (the copy, the PYTHONPATH folder, the marker the module writes when imported)."""
    out = tmp_path / "out"
    shutil.copytree(results[1], out)
    marker = tmp_path / "MARKER"
    lib = tmp_path / "lib"
    lib.mkdir()
    for where in (out, lib, *(out / la for la in LAYERS)):
        (where / "evil_module.py").write_text(_evil_code(marker))
    for la in LAYERS:
        f = out / la / "summary.json"
        s: dict[str, Any] = json.loads(f.read_text())
        s["model"]["spec"] = EVIL
        f.write_text(json.dumps(s))
    return out, lib, marker


def _broden(args: list[str], cwd: Path, lib: Path) -> subprocess.CompletedProcess[str]:
    """``python -m broden ARGS`` in ``cwd`` with ``lib`` (and the repository) importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(lib), str(REPO)]))
    cmd = [sys.executable, "-m", "broden", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _error_line(r: Any) -> str:
    """The one ``error:`` line of a failed command (exit status 2)."""
    done = isinstance(r, subprocess.CompletedProcess)
    text, code = (r.stderr, r.returncode) if done else (r.output, r.exit_code)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert code == 2, text
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def test_commands_never_import_what_a_tampered_summary_names(
    results: tuple[Path, Path], tmp_path: Path
) -> None:
    store, _ = results
    out, lib, marker = _tampered(results, tmp_path)
    for cwd in (out, out / "pool", tmp_path):  # the trap works: importable from everywhere
        check = [sys.executable, "-c", "import evil_module"]
        env = dict(os.environ, PYTHONPATH=str(lib))
        subprocess.run(check, cwd=cwd, env=env, check=True, timeout=60)
        assert marker.read_text() == "imported"
        marker.unlink()
    image = "3"
    seg = ["segment", image, "--results", str(out / "pool"), "--store", str(store)]

    r = _broden(["report", str(out), "-q"], out, lib)
    assert r.returncode == 0, r.stderr
    html = (out / "report.html").read_text()
    assert "not drawn" not in html  # the masks, from topmaps.npy
    assert EVIL in html  # the recorded spec is shown as text, escaped like any data

    r = _broden([*seg, "--out", str(tmp_path / "a.png")], out / "pool", lib)
    assert r.returncode == 2 and "--model" in _error_line(r)
    assert not (tmp_path / "a.png").exists()
    r = _broden([*seg, "--out", str(tmp_path / "b.png"), "--model", MODEL], out, lib)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.png").is_file() and "IoU" in r.stdout
    r = _broden([*seg, "--out", str(tmp_path / "c.png"), "--model", EVIL], tmp_path, lib)
    assert r.returncode == 2  # the user named it: loaded, and refused by its fingerprint
    assert "not the one dissected" in _error_line(r)
    marker.unlink()  # that import was the user's own doing; nothing else may import it

    r = _broden(["compare", str(out), "--out", str(tmp_path / "cmp")], out, lib)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp" / "comparison.csv").is_file()

    for la in LAYERS:  # results of an earlier broden: no topmaps.npy
        (out / la / "topmaps.npy").unlink()
    r = _broden(["report", str(out), "-q"], out, lib)
    assert r.returncode == 0, r.stderr
    html = (out / "report.html").read_text()
    assert "unit masks not drawn: pool/topmaps.npy is missing" in html
    assert "pass --model SPEC" in html
    assert not marker.exists(), "a command imported the module a results folder names"


def _masks(job: ShownLayer, size: int) -> np.ndarray:
    assert job.maps is not None
    return unit_masks(job.maps, job.layer.thresholds, size).numpy()


def test_report_masks_from_topmaps_are_those_of_the_rerun_model(tmp_path: Path) -> None:
    """ResNet-18 (the demo's model) at two layers: the maps saved during the dissection
    are bit for bit those a re-run of the model gives for the top images, so the masks and
    the strips the report draws from them are the same."""
    store, _ = tiny_store(tmp_path / "tiny.zarr")
    out = tmp_path / "out"
    spec, layers = "dissect.zoo:resnet18", ["layer2", "layer3"]
    settings = DissectSettings(quantile=0.02, input_size=112, top_k=4, progress=False)
    dissect(store, spec, layers, settings, out=out)
    st = open_store(store)
    for la in layers:
        layer = read_layer(out / la)
        saved, rerun = ShownLayer(layer, st, 4), ShownLayer(layer, st, 4)
        assert saved_maps(saved) == 4
        model_maps([rerun], {}, GivenModel(spec), "cpu", 5)
        assert saved.maps is not None and rerun.maps is not None
        assert saved.maps.dtype == rerun.maps.dtype
        np.testing.assert_array_equal(saved.maps.numpy(), rerun.maps.numpy())
        masks = _masks(saved, st.image_size)
        assert masks.any() and not masks.all()
        np.testing.assert_array_equal(masks, _masks(rerun, st.image_size))
    files = out / "report_files"
    write_report(out, top_k=4)
    strips = {p.relative_to(files): p.read_bytes() for p in files.rglob("unit-*.jpg")}
    for la in layers:
        (out / la / "topmaps.npy").unlink()
    html = write_report(out, top_k=4, model=spec, device="cpu").read_text()
    assert "not drawn" not in html and "differ from the recorded" not in html
    assert strips and strips == {
        p.relative_to(files): p.read_bytes() for p in files.rglob("unit-*.jpg")
    }


def test_topmaps_that_do_not_belong_are_not_used(
    results: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(results[1], out)
    good = np.load(out / "pool" / "topmaps.npy")
    np.save(out / "pool" / "topmaps.npy", good[::-1].copy())  # another unit's maps
    np.save(out / "conv" / "topmaps.npy", np.zeros((2, 3), np.float32))
    html = write_report(out).read_text()
    assert "topmaps.npy not used: its maps are not those of the top images" in html
    assert "topmaps.npy not used: it holds float32 maps of shape (2, 3)" in html
    assert "unit masks not drawn: pool/topmaps.npy is missing" not in html
    (out / "conv" / "topmaps.npy").write_bytes(b"\x93NUMPY garbage")
    assert "topmaps.npy not used: it is not a readable array" in write_report(out).read_text()


def test_fewer_saved_maps_than_top_k_show_fewer_images(results: tuple[Path, Path]) -> None:
    _, out = results
    html = write_report(out, top_k=12).read_text()  # dissected with top_k 10
    assert "topmaps.npy holds the maps of 10 top images per unit" in html
    assert "showing 10, not 12" in html


def test_segment_needs_the_model_named_by_the_user(results: tuple[Path, Path]) -> None:
    store, out = results
    args = ["segment", "1", "--results", str(out / "pool"), "--store", str(store), "--out"]
    r = runner.invoke(app, [*args, "x.png"])
    line = _error_line(r)
    assert "--model" in line and repr(MODEL) in line and "never code" in line
    r = runner.invoke(app, [*args, "x.png", "--model", "dissect.zoo:resnet18"])
    assert "is not the one dissected" in _error_line(r)


def _without_store(text: str) -> str:
    return json.dumps({k: v for k, v in json.loads(text).items() if k != "store"})


SUMMARY_DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2].encode(),
    "not JSON": lambda text: b"not json at all",
    "not UTF-8": lambda text: b'{"layer": "\xff\xfe"}',
    "deeply nested": lambda text: b"[" * 100_000 + b"]" * 100_000,
    "a count as a string": lambda text: text.replace('"units": 4', '"units": "4"').encode(),
    "no store": lambda text: _without_store(text).encode(),
    "a model of the wrong type": lambda text: json.dumps({**json.loads(text), "model": 7}).encode(),
    "a key with a newline": lambda text: json.dumps({**json.loads(text), "bad\nkey": 1}).encode(),
}


@pytest.mark.parametrize("damage", list(SUMMARY_DAMAGE))
def test_a_damaged_summary_is_one_error_line_naming_the_file(
    results: tuple[Path, Path], tmp_path: Path, damage: str
) -> None:
    store, good = results
    out = tmp_path / "out"
    shutil.copytree(good, out)
    f = out / "pool" / "summary.json"
    damaged = SUMMARY_DAMAGE[damage](f.read_text())
    assert damaged != f.read_bytes()
    f.write_bytes(damaged)
    seg = ["segment", "1", "--results", str(out / "pool"), "--store", str(store)]
    for args in (
        ["report", str(out)],
        [*seg, "--out", str(tmp_path / "o.png"), "--model", MODEL],
        ["compare", str(out), "--out", str(tmp_path / "cmp")],
    ):
        line = _error_line(runner.invoke(app, args))
        assert f"{out / 'pool'}: cannot read summary.json" in line, (damage, args[0], line)
