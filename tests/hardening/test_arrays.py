"""Odd arrays and options: a layer without units, a 3-D output that is not clearly
tokens, an empty concept set, a non-positive input size and a summary.json with values
of the wrong type are each one ``error:`` line with exit status 2 (issue 12, item 7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect import DissectError, score_activations
from broden.dissect.concepts import select_concepts
from broden.dissect.settings import DissectSettings
from broden.store import open_store
from tests.dissect_helpers import TinyStore, random_labels_store

runner = CliRunner()


def one_error_line(result, *phrases: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def cli(*args: str | Path):
    return runner.invoke(app, [*map(str, args)])


def dissect_cli(store: Path, out: Path, *args: str | Path):
    return cli("dissect", store, "--out", out, "-q", "--no-report", "--workers", "0", *args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("arrays") / "tiny.zarr")


def saved(tmp_path: Path, name: str, shape: tuple[int, ...]) -> Path:
    path = tmp_path / f"{name}.npy"
    np.save(path, np.random.default_rng(0).normal(size=shape).astype(np.float32))
    return path


class NoUnits(nn.Module):
    """``empty`` returns the input's first 0 channels: (B, 0, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.empty = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.empty(x[:, :0])


def no_units_net() -> NoUnits:
    """The ``tests.hardening.test_arrays:no_units_net`` model spec."""
    return NoUnits()


# -- zero units ------------------------------------------------------------------------------


def test_activations_with_zero_units(tiny, tmp_path):
    acts = saved(tmp_path, "conv", (tiny.n, 0, 3, 3))
    one_error_line(dissect_cli(tiny.path, tmp_path / "o", "--activations", acts),
                   "layer 'conv'", "0 units", "nothing to dissect")  # fmt: skip


def test_model_layer_with_zero_channels(tiny, tmp_path):
    spec = "tests.hardening.test_arrays:no_units_net"
    r = dissect_cli(tiny.path, tmp_path / "o", "--model", spec, "--layer", "empty",
                    "--normalize", "none")  # fmt: skip
    one_error_line(r, "layer 'empty'", "0 units")


def test_empty_activation_map(tiny, tmp_path):
    acts = saved(tmp_path, "flat", (tiny.n, 4, 0, 3))
    one_error_line(dissect_cli(tiny.path, tmp_path / "o", "--activations", acts),
                   "4 units of 0×3")  # fmt: skip


# -- 3-D outputs ------------------------------------------------------------------------------


def test_three_d_output_that_is_not_clearly_tokens_asks_for_layout_tokens(tiny, tmp_path):
    """(N, 60, 30), a 1-D convolution's (B, C, L) say: as tokens it would be a 7×7 grid
    after 11 prefix tokens; auto refuses it, ``--layout tokens`` reads it so."""
    acts = saved(tmp_path, "seq", (tiny.n, 60, 30))
    r = dissect_cli(tiny.path, tmp_path / "o", "--activations", acts)
    one_error_line(r, "layer 'seq'", "3-D", "ambiguous", "--layout tokens", "11 class/register")
    ok = dissect_cli(tiny.path, tmp_path / "o", "--activations", acts, "--layout", "tokens")
    assert ok.exit_code == 0, ok.output
    summary = json.loads((tmp_path / "o" / "seq" / "summary.json").read_text())
    assert summary["units"] == 30 and summary["activation_shape"] == [7, 7]
    assert summary["settings"]["layout"] == "tokens"


def test_tokens_with_a_class_token_still_read_without_layout(tiny, tmp_path):
    acts = saved(tmp_path, "vit", (tiny.n, 1 + 16, 6))  # class token + 4×4 patches
    r = dissect_cli(tiny.path, tmp_path / "o", "--activations", acts)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "vit" / "summary.json").read_text())
    assert summary["units"] == 6 and summary["activation_shape"] == [4, 4]


def test_layout_tokens_on_a_4d_output(tiny, tmp_path):
    acts = saved(tmp_path, "conv", (tiny.n, 4, 3, 3))
    one_error_line(
        dissect_cli(tiny.path, tmp_path / "o", "--activations", acts, "--layout", "tokens"),
        "--layout tokens",
        "4-D",
        "not tokens",
    )


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", " ", "  "])
def test_empty_concept_set(tiny, tmp_path, spec):
    acts = saved(tmp_path, "conv", (tiny.n, 2, 3, 3))
    r = dissect_cli(tiny.path, tmp_path / "o", "--activations", acts, "--concepts", spec)
    one_error_line(r, "--concepts", "an empty concept set")
    assert not (tmp_path / "o" / "conv").exists()


def test_empty_concept_set_through_the_library(tiny, tmp_path):
    store = open_store(tiny.path)
    with pytest.raises(DissectError, match="an empty concept set"):
        select_concepts(store, "")
    with pytest.raises(DissectError, match="an empty concept set"):
        DissectSettings(concepts=["", " "])
    assert len(select_concepts(store, None)) == len(tiny.concepts)  # no set: every concept


@pytest.mark.parametrize("size", ["0", "-3"])
def test_non_positive_input_size(tiny, tmp_path, size):
    r = dissect_cli(tiny.path, tmp_path / "o", "--model", "dissect.zoo:resnet18",
                    "--layer", "layer1", "--input-size", size)  # fmt: skip
    one_error_line(r, f"--input-size must be at least 1, got {size}")


# -- compare: summary.json with values of the wrong type ----------------------------------------


@pytest.fixture(scope="module")
def layer(tiny, tmp_path_factory) -> Path:
    """A dissected layer folder (precomputed activations)."""
    out = tmp_path_factory.mktemp("layer")
    acts = np.random.default_rng(1).normal(size=(tiny.n, 4, 3, 3)).astype(np.float32)
    res = score_activations(tiny.path, acts, "conv", DissectSettings(progress=False), out=out)
    return res.directory


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("detectors", "many", "detectors"),
        ("detectors", True, "detectors"),
        ("detectors", "2", "detectors"),
        ("detectors", 2.5, "detectors"),
        ("detectors", -1, "detectors"),
        ("units", [4], "units"),
        ("per_category", [1, 2], "per_category"),
        ("unique_detectors", {"top_label": "x", "per_category": 0}, "unique_detectors.top_label"),
    ],
)
def test_compare_with_a_wrongly_typed_summary(layer, tmp_path, field, value, where):
    bad = tmp_path / "bad" / "conv"
    shutil.copytree(layer, bad)
    doc = json.loads((bad / "summary.json").read_text())
    doc[field] = value
    (bad / "summary.json").write_text(json.dumps(doc))
    r = cli("compare", layer, bad, "--out", tmp_path / "cmp")
    one_error_line(r, f"{bad}: cannot read summary.json", f"({where}: ")
    assert not (tmp_path / "cmp" / "comparison.csv").exists()


def test_compare_with_a_summary_that_is_not_an_object(layer, tmp_path):
    bad = tmp_path / "bad" / "conv"
    shutil.copytree(layer, bad)
    (bad / "summary.json").write_text(json.dumps([1, 2, 3]))
    one_error_line(cli("compare", bad, "--out", tmp_path / "cmp"),
                   f"{bad}: cannot read summary.json", "(document)")  # fmt: skip


def test_compare_of_an_intact_summary_still_reads(layer, tmp_path):
    r = cli("compare", layer, "--out", tmp_path / "cmp")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cmp" / "comparison.csv").is_file()
