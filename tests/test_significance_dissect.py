"""The significance tests through the dissection (issue 13 B, "Which detectors to trust"):
a planted detector is significant with a tiny p; units of random blobs unrelated to the
labels are mostly not; ``units.csv``'s ``p_value`` and ``significant`` equal the core's
functions fed the same counts computed here from the store's own arrays; ``summary.json``
counts significant detectors, the significance level changes that count (also for a
reused layer), the report marks a detector that is not significant, and the CLI option
rejects 0 and 1."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import binom
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect import score_activations
from broden.dissect.report import write_report
from broden.dissect.settings import DissectSettings
from broden.dissect.significance import (
    LocalisationAccumulator,
    combine_tests,
    label_significance,
)
from broden.dissect.significance_image import mann_whitney
from broden.dissect.tally import upsample_reference
from tests.dissect_helpers import TinyStore, random_labels_store

N, L, RANDOM = 60, 16, 64
PLANTED = "obj0"  # id 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("sig") / "tiny.zarr", n=N, shard_size=10)


def settings(**kw: Any) -> DissectSettings:
    return DissectSettings(**{"workers": 0, "progress": False, "batch_size": 7, **kw})


def planted_acts(ts: TinyStore) -> tuple[np.ndarray, np.ndarray]:
    """Unit 0: the mask of PLANTED (threshold 0.5); units 1..RANDOM: random 4 × 4 blobs
    upsampled to L × L, thresholded at their 90th percentile (about 10 % active)."""
    rng = np.random.default_rng(1)
    blobs = np.kron(rng.normal(size=(N, RANDOM, 4, 4)), np.ones((L // 4, L // 4)))
    mask = (ts.pixel["object"][:, 0] == 10).astype(np.float64)
    acts = np.concatenate([mask[:, None], blobs], axis=1).astype(np.float32)
    thr = np.concatenate(
        [[0.5], np.quantile(blobs.transpose(1, 0, 2, 3).reshape(RANDOM, -1), 0.9, axis=1)]
    )
    return acts, thr


@pytest.fixture(scope="module")
def run(tiny: TinyStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    acts, thr = planted_acts(tiny)
    out = tmp_path_factory.mktemp("out")
    res = score_activations(tiny.path, acts, "layer", settings(), out=out, thresholds=thr)
    return {"acts": acts, "thr": thr, "out": out, "res": res, "dir": out / "layer"}


def read_units(directory: Path) -> list[dict[str, str]]:
    with open(directory / "units.csv", newline="") as f:
        return list(csv.DictReader(f))


def independent_p(ts: TinyStore, acts: np.ndarray, thr: np.ndarray, names: list[str]) -> np.ndarray:
    """Raw p-values from the store's arrays and the unit masks, fed to the core directly."""
    ids = {f"{n}": i + 1 for i, (n, _) in enumerate(ts.concepts)}
    cols = [ids[n] for n in names]
    P = L * L
    masks = np.stack(
        [
            upsample_reference(torch.from_numpy(acts[:, u]), L).numpy() > thr[u]
            for u in range(acts.shape[1])
        ],
        axis=1,
    ).reshape(N, acts.shape[1], P)
    layers = np.concatenate([v.reshape(N, v.shape[1], P) for v in ts.pixel.values()], axis=1)
    whole = np.concatenate(list(ts.image_labels.values()), axis=1)
    m = np.stack([(layers == c).sum(axis=1) for c in cols], axis=1).astype(np.float64)
    slots = np.stack([(whole == c).sum(axis=1) for c in cols], axis=1)  # (N, C)
    m += slots[:, :, None]  # a whole-image label: multiplicity 1 everywhere, per slot
    present = slots > 0
    A = masks.sum(axis=2)
    B = m.sum(axis=2)
    Q = (m * m).sum(axis=2)
    X = np.einsum("iup,icp->iuc", masks.astype(np.float64), m)
    acc = LocalisationAccumulator(acts.shape[1], len(cols), L)
    acc.add(A, B, intersection=X, concept_squares=Q)
    loc = acc.result()
    image_level = present.any(axis=0)
    image_p = np.full_like(loc.p_value, np.nan)
    maxima = acts.max(axis=(2, 3)).T
    image_p[:, image_level] = mann_whitney(maxima, present[:, image_level]).p_value
    return combine_tests(loc.p_value, image_p, image_level)


def test_planted_detector_is_significant_with_a_tiny_p(run: dict[str, Any]) -> None:
    row = read_units(run["dir"])[0]
    assert row["label"] == PLANTED
    assert row["significant"] == "1"
    assert float(row["p_value"]) < 1e-6


def test_random_blob_units_are_mostly_not_significant(run: dict[str, Any]) -> None:
    rows = read_units(run["dir"])[1:]
    hits = sum(r["significant"] == "1" for r in rows)
    # the label is each unit's best of many concepts; still at most a binomial tail
    bound = int(binom.ppf(0.999, RANDOM, 0.05))
    assert hits <= bound, (hits, bound)


def test_units_csv_equals_the_core_fed_the_same_counts(
    tiny: TinyStore, run: dict[str, Any]
) -> None:
    with open(run["dir"] / "concepts.csv", newline="") as f:
        names = [r["name"] for r in csv.DictReader(f)]
    raw = independent_p(tiny, run["acts"], run["thr"], names)
    saved = np.load(run["dir"] / "pvalues.npy")
    np.testing.assert_allclose(saved, raw, rtol=1e-9, atol=1e-300, equal_nan=True)
    rows = read_units(run["dir"])
    label = np.array([names.index(r["label"]) if r["label"] else -1 for r in rows])
    sig = label_significance(raw, label, alpha=0.05)
    for u, r in enumerate(rows):
        if sig.tested[u]:
            assert float(r["p_value"]) == pytest.approx(sig.p_value[u], rel=1e-5)
            assert r["significant"] == str(int(sig.significant[u]))
        else:
            assert (r["p_value"], r["significant"]) == ("", "0")
    # the existing columns come first, unchanged
    header = list(rows[0])
    assert header[:4] == ["unit", "label", "category", "iou"]
    assert header[-2:] == ["p_value", "significant"]


def test_summary_counts_significant_detectors_and_alpha_changes_it(
    run: dict[str, Any], tiny: TinyStore
) -> None:
    res = run["res"]
    summary = json.loads((run["dir"] / "summary.json").read_text())
    det = res.scores.iou > 0.04
    assert res.significance is not None
    assert summary["significant_detectors"] == int((det & res.significance.significant).sum())
    assert 1 <= summary["significant_detectors"] <= summary["detectors"]
    assert summary["settings"]["alpha"] == 0.05
    # a reused layer is re-judged at the new level from pvalues.npy
    loose = score_activations(
        tiny.path,
        run["acts"],
        "layer",
        settings(alpha=0.999),
        out=run["out"],
        thresholds=run["thr"],
    )
    assert loose.reused
    assert loose.summary.significant_detectors > summary["significant_detectors"]
    strict = score_activations(
        tiny.path,
        run["acts"],
        "layer",
        settings(alpha=1e-300),
        out=run["out"],
        thresholds=run["thr"],
    )
    assert strict.summary.significant_detectors == 0
    back = score_activations(
        tiny.path, run["acts"], "layer", settings(), out=run["out"], thresholds=run["thr"]
    )
    assert back.summary.significant_detectors == summary["significant_detectors"]


def test_a_cached_layer_without_p_values_leaves_them_empty(
    tiny: TinyStore, run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "old"
    score_activations(tiny.path, run["acts"], "layer", settings(), out=out, thresholds=run["thr"])
    (out / "layer" / "pvalues.npy").unlink()
    res = score_activations(
        tiny.path, run["acts"], "layer", settings(), out=out, thresholds=run["thr"]
    )
    assert res.reused and res.significance is None
    assert any("pvalues.npy" in n for n in res.notes)
    assert all(r["p_value"] == r["significant"] == "" for r in read_units(out / "layer"))
    assert res.summary.significant_detectors is None


def test_report_marks_a_detector_that_is_not_significant(
    tiny: TinyStore, run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "rep"
    res = score_activations(
        tiny.path, run["acts"], "layer", settings(top_k=2), out=out, thresholds=run["thr"]
    )
    assert res.significance is not None
    weak = (res.scores.iou > 0.04) & ~res.significance.significant
    assert weak.any()
    write_report(out, top_k=2)
    html = (out / "report.html").read_text()
    assert "not significant (p = " in html
    assert f"<b>{res.summary.significant_detectors}</b> significant detectors" in html


def test_cli_significance_alpha_rejects_0_and_1(
    tiny: TinyStore, run: dict[str, Any], tmp_path: Path
) -> None:
    acts = tmp_path / "layer.npy"
    np.save(acts, run["acts"])
    thr = tmp_path / "thr.npy"
    np.save(thr, run["thr"])
    base = [
        "dissect",
        str(tiny.path),
        "--activations",
        str(acts),
        "--thresholds",
        str(thr),
        "--workers",
        "0",
        "-q",
        "--no-report",
    ]
    for bad in ("0", "1"):
        r = CliRunner().invoke(
            app, [*base, "--out", str(tmp_path / "bad"), "--significance-alpha", bad]
        )
        assert r.exit_code == 2
        lines = [x for x in r.output.strip().splitlines() if x]
        assert len(lines) == 1 and "--significance-alpha" in lines[0], r.output
    r = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "ok"), "--significance-alpha", "0.5"]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "ok" / "layer" / "summary.json").read_text())
    assert summary["settings"]["alpha"] == 0.5
