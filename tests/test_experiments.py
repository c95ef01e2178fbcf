"""The experiments on top of the dissection (DESIGN.md §5): comparisons of layers and
models, the basis-rotation experiment (Haar-random SO(n), Q^α along the geodesic), and
segmenting images with a layer's detector units, on synthetic stores whose units copy
known concepts' masks (tests/experiment_helpers.py)."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from broden.dissect import DissectError, dissect, score_activations
from broden.dissect.dispatch import run_dissection
from broden.dissect.experiments import (
    ROTATED_DIR,
    ChannelRotation,
    ExperimentWarning,
    compare,
    random_rotation,
    rotation_dir,
    rotation_key,
    rotation_power,
    run_rotation,
    run_rotations,
    segment,
)
from broden.dissect.experiments.cli import register
from broden.dissect.settings import DissectSettings as S
from tests.experiment_helpers import block_store, planted_activations

MODEL = "tests.experiment_helpers:painted_net"
GIVEN = {"mix": np.full(4, 0.5), "pool": np.full(3, 0.5)}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path, size: tuple[int, int] | None = None) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        if size is not None:
            assert im.size == size


def assert_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")


def same_counts(a: Path, b: Path) -> None:
    with np.load(a / "counts.npz") as za, np.load(b / "counts.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k])
    np.testing.assert_array_equal(np.load(a / "iou.npy"), np.load(b / "iou.npy"))
    np.testing.assert_array_equal(np.load(a / "thresholds.npy"), np.load(b / "thresholds.npy"))


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    """The painted block store and the painted model's two layers dissected with given
    thresholds 0.5: units 0-2 of ``mix`` (and ``pool``) copy objects obj0-obj2 exactly."""
    root = tmp_path_factory.mktemp("painted")
    ts = block_store(root / "paint.zarr")
    out = root / "out"
    dissect(
        ts.path,
        MODEL,
        ["mix", "pool"],
        S(normalize="none", workers=0, progress=False),
        out=out,
        thresholds=GIVEN,
    )
    return ts, out


@pytest.fixture(scope="module")
def other_store_run(tmp_path_factory):
    """The same model dissected on another store (a different draw of blocks)."""
    root = tmp_path_factory.mktemp("painted2")
    ts = block_store(root / "paint2.zarr", seed=5)
    out = root / "out"
    dissect(
        ts.path,
        MODEL,
        ["mix"],
        S(normalize="none", workers=0, progress=False),
        out=out,
        thresholds={"mix": GIVEN["mix"]},
    )
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A store of small block concepts and 64 units of activations, 8 of which copy one
    object concept's mask each (the rest noise), saved as .npy."""
    root = tmp_path_factory.mktemp("planted")
    ts = block_store(root / "blocks.zarr", label_size=32, fill=0.3)
    acts = planted_activations(ts, units=64, planted=8, size=16)
    np.save(root / "conv.npy", acts)
    return ts, root / "conv.npy", root


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


runner = CliRunner()


# -- rotation matrices --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 33])
def test_random_rotation_is_orthogonal_with_determinant_one(n):
    q = random_rotation(n, seed=11)
    assert q.shape == (n, n) and q.dtype == np.float64
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(q.T @ q, np.eye(n), atol=1e-12)
    assert np.linalg.det(q) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(q, random_rotation(n, seed=11))
    if n > 1:
        assert not np.allclose(q, random_rotation(n, seed=12))


def test_random_rotations_are_spread_over_the_group():
    # Haar: E[Q] = 0 and E[q_ij^2] = 1/n; a sign-unfixed QR would bias the diagonal
    qs = np.stack([random_rotation(3, seed=s) for s in range(2000)])
    np.testing.assert_allclose(qs.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose((qs**2).mean(axis=0), 1 / 3, atol=0.05)


def test_random_rotation_rejects_bad_arguments():
    for n in (0, -2, 2.5):
        with pytest.raises(DissectError, match="positive number of units"):
            random_rotation(n, seed=0)  # type: ignore[arg-type]
    with pytest.raises(DissectError, match="non-negative integer"):
        random_rotation(3, seed=-1)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 9, 32])
def test_rotation_power_follows_the_geodesic(n):
    q = random_rotation(n, seed=n)
    np.testing.assert_array_equal(rotation_power(q, 0.0), np.eye(n))
    np.testing.assert_array_equal(rotation_power(q, 1.0), q)
    for a, b in ((0.1, 0.25), (0.3, 0.2), (0.5, 0.5), (0.05, 0.6)):
        qa, qb, qab = rotation_power(q, a), rotation_power(q, b), rotation_power(q, a + b)
        for m in (qa, qb, qab):
            np.testing.assert_allclose(m @ m.T, np.eye(n), atol=1e-10)
            assert np.linalg.det(m) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(qa @ qb, qab, atol=1e-10)
    np.testing.assert_allclose(rotation_power(q, 0.5) @ rotation_power(q, 0.5), q, atol=1e-10)
    if n > 1:  # a small step stays near the identity
        assert np.abs(rotation_power(q, 1e-3) - np.eye(n)).max() < 1e-2


def test_rotation_power_handles_eigenvalues_minus_one():
    w = random_rotation(5, seed=3)
    c, s = np.cos(2.0), np.sin(2.0)
    d = np.eye(5)
    d[0, 0] = d[1, 1] = -1.0  # a half turn in one plane
    d[2:4, 2:4] = [[c, -s], [s, c]]
    for q in (np.diag([-1.0, -1.0, 1.0]), np.diag([-1.0, 1.0, -1.0, -1.0, -1.0]), w @ d @ w.T):
        n = len(q)
        h = rotation_power(q, 0.5)
        np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-10)
        np.testing.assert_allclose(h @ h, q, atol=1e-10)
        np.testing.assert_allclose(
            rotation_power(q, 0.25) @ rotation_power(q, 0.5), rotation_power(q, 0.75), atol=1e-10
        )


def test_rotation_power_refuses_reflections_and_non_orthogonal_matrices():
    with pytest.raises(DissectError, match="determinant -1"):
        rotation_power(np.diag([1.0, -1.0]), 0.5)
    with pytest.raises(DissectError, match="not orthogonal"):
        rotation_power(np.array([[1.0, 0.1], [0.0, 1.0]]), 0.5)
    with pytest.raises(DissectError, match="square"):
        rotation_power(np.ones((2, 3)), 0.5)
    with pytest.raises(DissectError, match="finite"):
        rotation_power(np.eye(2), float("nan"))


def test_channel_rotation_rotates_the_channels_at_every_position():
    maps = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    r = random_rotation(5, seed=4)
    out = ChannelRotation(r)(maps)
    want = np.einsum("vu,buhw->bvhw", r, maps.numpy())
    np.testing.assert_allclose(out.numpy(), want, atol=1e-12)
    # at one position: R @ the channel vector
    np.testing.assert_allclose(out[1, :, 2, 3].numpy(), r @ maps[1, :, 2, 3].numpy(), atol=1e-12)
    lazy = ChannelRotation(seed=4, alpha=1.0)
    np.testing.assert_allclose(lazy(maps).numpy(), want, atol=1e-12)
    assert lazy.key == rotation_key(4, 1.0)
    ident = ChannelRotation(seed=4, alpha=0.0)
    assert ident(maps) is maps
    with pytest.raises(DissectError, match="layer has 6 units"):
        lazy(torch.zeros(1, 6, 2, 2, dtype=torch.float64))
    with pytest.raises(DissectError, match="either a matrix or a seed"):
        ChannelRotation()


# -- the rotation experiment --------------------------------------------------------------------


def test_full_rotation_of_planted_detectors_lowers_unique_detectors(planted):
    ts, acts, root = planted
    out = root / "rot"
    res = run_rotation(
        ts.path,
        None,
        "conv",
        7,
        (0.0, 1.0),
        S(quantile=0.03, workers=0, progress=False),
        out=out,
        activations=acts,
    )
    base = res.unrotated
    assert base.directory == out / "conv"
    # the 8 planted units are detectors of their 8 concepts
    assert base.unique_detectors["top_label"] == 8
    assert [base.unit_labels()[u]["label"] for u in range(8)] == [f"obj{u}" for u in range(8)]
    # alpha = 0 is the identity: the same counts, thresholds and IoU
    zero = res.rotated[0.0]
    assert zero.directory == rotation_dir(out, 7, 0.0) / "conv"
    same_counts(base.directory, zero.directory)
    # a full rotation mixes them with the noise units: far fewer unique detectors
    full = res.rotated[1.0]
    assert full.directory == out / ROTATED_DIR / "seed7-alpha1.0" / "conv"
    assert full.unique_detectors["top_label"] <= base.unique_detectors["top_label"] // 2
    assert full.summary.settings.transform == rotation_key(7, 1.0)
    rows = read_csv(out / "conv" / "rotation.csv")
    assert [(r["basis"], float(r["alpha"])) for r in rows] == [
        ("unrotated", 0.0), ("rotated", 0.0), ("rotated", 1.0),
    ]  # fmt: skip
    for row, r in zip(rows, (base, zero, full), strict=True):
        assert int(row["unique_top_label"]) == r.unique_detectors["top_label"]
        assert int(row["unique_per_category"]) == r.unique_detectors["per_category"]
        assert int(row["detectors"]) == r.detectors
    assert float(rows[2]["top_label_vs_unrotated"]) == pytest.approx(
        full.unique_detectors["top_label"] / 8
    )
    assert_png(out / "conv" / "rotation.png")
    assert_svg(out / "conv" / "rotation.svg")
    assert "unique vs unrotated" in res.format()


def test_rotation_is_deterministic_for_a_seed_and_cached_per_seed_and_alpha(planted, tmp_path):
    ts, acts, _ = planted
    s = S(quantile=0.03, workers=0, progress=False)
    kw = dict(activations=acts)
    a = run_rotation(ts.path, None, "conv", 3, (1.0,), s, out=tmp_path / "a", **kw)
    b = run_rotation(ts.path, None, "conv", 3, (1.0,), s, out=tmp_path / "b", **kw)
    same_counts(a.rotated[1.0].directory, b.rotated[1.0].directory)
    # the same call again reuses every result; another seed or alpha is a new dissection
    again = run_rotation(ts.path, None, "conv", 3, (1.0, 0.5), s, out=tmp_path / "a", **kw)
    assert again.unrotated.reused and again.rotated[1.0].reused
    assert not again.rotated[0.5].reused
    other = run_rotation(ts.path, None, "conv", 4, (1.0,), s, out=tmp_path / "a", **kw)
    assert not other.rotated[1.0].reused
    assert not np.array_equal(other.rotated[1.0].iou, a.rotated[1.0].iou)


def test_rotation_with_precomputed_activations_matches_score_activations(planted, tmp_path):
    ts, acts, _ = planted
    rot = ChannelRotation(seed=2, alpha=0.5)
    direct = score_activations(
        ts.path,
        acts,
        "conv",
        S(quantile=0.03, workers=0, progress=False),
        out=tmp_path / "direct",
        unit_transform=rot,
        transform_key=rot.key,
    )
    res = run_rotation(
        ts.path,
        None,
        "conv",
        2,
        (0.5,),
        S(quantile=0.03, workers=0, progress=False),
        out=tmp_path / "exp",
        activations=acts,
    )
    same_counts(direct.directory, res.rotated[0.5].directory)


def test_rotation_of_a_model_layer(painted, tmp_path):
    ts, _ = painted
    s = S(normalize="none", quantile=0.2, workers=0, progress=False)
    res = run_rotations(ts.path, MODEL, ["mix", "pool"], 1, (0.0, 1.0), s, out=tmp_path)
    assert set(res) == {"mix", "pool"}
    for la, r in res.items():
        assert r.unrotated.directory == tmp_path / la
        same_counts(r.unrotated.directory, r.rotated[0.0].directory)
        assert (tmp_path / la / "rotation.csv").is_file()
        assert r.rotated[1.0].summary.model.spec == MODEL
    # segmenting with rotated results re-applies the recorded rotation
    seg0 = segment(1, tmp_path / "mix", store=ts.path, model=MODEL)
    seg_r0 = segment(1, rotation_dir(tmp_path, 1, 0.0) / "mix", store=ts.path, model=MODEL)
    np.testing.assert_array_equal(seg0.masks, seg_r0.masks)
    segment(1, rotation_dir(tmp_path, 1, 1.0) / "mix", store=ts.path, model=MODEL)
    labels = [s.label for s in compare([tmp_path, rotation_dir(tmp_path, 1, 1.0)], tmp_path).series]
    assert labels[-2:] == [f"{MODEL}/{la} (rotated: seed 1, alpha 1)" for la in ("mix", "pool")]
    with pytest.raises(DissectError, match="--thresholds cannot be combined with --rotate"):
        run_dissection(ts.path, s, out=tmp_path, model=MODEL, layers=["mix"], rotate=1,
                       thresholds=GIVEN)  # fmt: skip
    with pytest.raises(DissectError, match="--rotate SEED"):
        run_rotations(ts.path, MODEL, ["mix"], -1, settings=s, out=tmp_path)
    with pytest.raises(DissectError, match="--alpha"):
        run_rotations(ts.path, MODEL, ["mix"], 1, (float("inf"),), s, out=tmp_path)


# -- comparisons --------------------------------------------------------------------------------


def test_compare_writes_the_summaries_numbers(painted, tmp_path):
    _, out = painted
    res = compare([out], tmp_path / "cmp")
    assert [s.label for s in res.series] == [f"{MODEL}/mix", f"{MODEL}/pool"]
    assert res.warnings == []
    rows = read_csv(res.csv)
    assert len(rows) == 2
    for row, layer in zip(rows, ("mix", "pool"), strict=True):
        s = json.loads((out / layer / "summary.json").read_text())
        assert row["series"] == f"{MODEL}/{layer}" and row["layer"] == layer
        assert int(row["units"]) == s["units"]
        assert int(row["detectors"]) == s["detectors"]
        assert int(row["unique_top_label"]) == s["unique_detectors"]["top_label"]
        assert int(row["unique_per_category"]) == s["unique_detectors"]["per_category"]
        for cat, pc in s["per_category"].items():
            assert int(row[f"{cat}_detectors"]) == pc["detectors"]
            assert float(row[f"{cat}_share"]) == pytest.approx(pc["detectors"] / s["units"])
            assert int(row[f"{cat}_unique_per_category"]) == pc["unique_per_category"]
        assert row["differs"] == "" and row["store_fingerprint"] == s["store"]["fingerprint"]
    # mix: 4 object detectors of 4 units (units 0-2 exactly, unit 3 the union)
    assert rows[0]["object_detectors"] == "4" and float(rows[0]["object_share"]) == 1.0
    assert [p.name for p in res.figures] == ["comparison.png", "comparison.svg"]
    assert_png(res.figures[0])
    assert_svg(res.figures[1])
    assert "mix" in res.format()


def test_compare_names_series_and_rescores_at_another_iou_threshold(painted, tmp_path):
    _, out = painted
    res = compare(["A=" + str(out / "mix"), ("B", out)], tmp_path / "cmp", iou_threshold=0.5)
    assert [s.label for s in res.series] == ["A", "B/mix", "B/pool"]
    # unit 3 of mix (the union of three objects, IoU 0.41) is no detector at IoU > 0.5
    assert res.series[0].detectors == 3 and res.series[0].iou_threshold == 0.5
    rows = read_csv(res.csv)
    assert rows[0]["detectors"] == "3" and rows[0]["iou_threshold"] == "0.5"
    # re-scoring at a threshold between the same IoUs reproduces the summary
    same = compare([out / "mix"], tmp_path / "cmp2", iou_threshold=0.0400001).series[0]
    s = json.loads((out / "mix" / "summary.json").read_text())
    assert (same.detectors, same.unique_top_label, same.unique_per_category) == (
        s["detectors"], s["unique_detectors"]["top_label"], s["unique_detectors"]["per_category"],
    )  # fmt: skip
    assert {c: v.model_dump() for c, v in same.per_category.items()} == s["per_category"]
    # the same layer twice gets distinct labels
    twice = compare([out / "mix", out / "mix"], tmp_path / "cmp3")
    assert len({s.label for s in twice.series}) == 2


def test_compare_warns_when_stores_differ(painted, other_store_run, tmp_path):
    _, out = painted
    with pytest.warns(ExperimentWarning, match="different stores"):
        res = compare([out / "mix", other_store_run], tmp_path / "cmp")
    rows = read_csv(res.csv)
    assert rows[0]["differs"] == "" and "store" in rows[1]["differs"].split(";")
    assert rows[0]["store_fingerprint"] != rows[1]["store_fingerprint"]
    assert any("different stores" in w for w in res.warnings)


def test_compare_errors(tmp_path, painted):
    with pytest.raises(DissectError, match="no such folder"):
        compare([tmp_path / "missing"], tmp_path / "cmp")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DissectError, match="neither a layer folder"):
        compare([tmp_path / "empty"], tmp_path / "cmp")
    with pytest.raises(DissectError, match="nothing to compare"):
        compare([], tmp_path / "cmp")
    with pytest.raises(DissectError, match="--iou-threshold"):
        compare([painted[1]], tmp_path / "cmp", iou_threshold=1.5)


def test_compare_command(painted, other_store_run, tmp_path):
    _, out = painted
    r = runner.invoke(
        cli(), ["compare", str(out), f"other={other_store_run}", "--out", str(tmp_path / "c")]
    )
    assert r.exit_code == 0, r.output
    assert "warning: the results were computed with different stores" in r.output
    assert "other/mix" not in r.output and "other " in r.output  # one layer: just the name
    assert (tmp_path / "c" / "comparison.csv").is_file()
    r = runner.invoke(cli(), ["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "error: " in r.output and "Traceback" not in r.output


# -- segmentation -------------------------------------------------------------------------------


def _image_with_all_three(ts) -> int:
    obj = ts.pixel["object"][:, 0]
    return next(i for i in range(ts.n) if all((obj[i] == c).any() for c in (1, 2, 3)))


def test_segment_a_store_image_gives_each_units_concept_region(painted, tmp_path):
    ts, out = painted
    i = _image_with_all_three(ts)
    seg = segment(i, out / "mix", store=ts.path, model=MODEL, out=tmp_path / "o.png")
    # best IoU first: units 0-2 (IoU 1, copies of obj0-obj2), then unit 3 (their union)
    assert seg.units.tolist() == [0, 1, 2, 3]
    assert seg.labels[:3] == ["obj0", "obj1", "obj2"]
    assert seg.categories[:3] == ["object"] * 3
    np.testing.assert_allclose(seg.ious[:3], 1.0)
    S = ts.images.shape[1]
    assert seg.masks.shape == (4, S, S) and seg.overlay.shape == (S, S, 3)
    labels = ts.pixel["object"][i, 0].repeat(2, 0).repeat(2, 1)  # label grid → image grid
    for u in range(3):
        np.testing.assert_array_equal(seg.masks[u], labels == u + 1)
    np.testing.assert_array_equal(seg.masks[3], np.isin(labels, [1, 2, 3]))
    # overlapping masks: the unit with the higher IoU is on top
    np.testing.assert_array_equal(seg.top[labels == 1], 0)
    np.testing.assert_array_equal(seg.top[labels == 3], 2)
    assert (seg.top[~np.isin(labels, [1, 2, 3])] == -1).all()
    assert_png(tmp_path / "o.png", (S, S))
    assert len(set(seg.colors)) == 4
    # the overlay changes exactly the painted pixels' colours (and the legend box)
    assert (seg.overlay != ts.images[i]).any()


def test_segment_an_image_file_of_another_size(painted, tmp_path):
    ts, out = painted
    i = _image_with_all_three(ts)
    big = Image.fromarray(ts.images[i]).resize((96, 80), Image.Resampling.NEAREST)
    big.save(tmp_path / "big.png")
    seg = segment(tmp_path / "big.png", out / "mix", model=MODEL, out=tmp_path / "overlay.png")
    assert seg.image.shape == (80, 96, 3) and seg.masks.shape == (4, 80, 96)
    assert_png(tmp_path / "overlay.png", (96, 80))
    L = ts.label_size
    rows = (np.arange(80) * L) // 80
    cols = (np.arange(96) * L) // 96
    labels = ts.pixel["object"][i, 0][rows[:, None], cols[None, :]]
    for u in range(3):  # the region, up to the resizes at block edges
        region = labels == u + 1
        assert region.any()
        assert (seg.masks[u] == region).mean() > 0.97
        assert seg.labels[u] == f"obj{u}"


def test_segment_top_and_min_iou_choose_the_units(painted):
    ts, out = painted
    assert segment(0, out / "mix", store=ts.path, model=MODEL, top=2).units.tolist() == [0, 1]
    half = segment(0, out / "mix", store=ts.path, model=MODEL, min_iou=0.5)
    assert half.units.tolist() == [0, 1, 2]
    none = segment(0, out / "mix", store=ts.path, model=MODEL, min_iou=1.0)
    assert none.masks.shape == (0, *ts.images.shape[1:3]) and "no detector" in none.format()
    with pytest.raises(DissectError, match="--top"):
        segment(0, out / "mix", store=ts.path, model=MODEL, top=0)


def test_segment_errors(painted, planted, tmp_path):
    ts, out = painted
    acts = np.zeros((ts.n, 2, 4, 4), np.float32)
    score_activations(ts.path, acts, "conv", S(progress=False), out=tmp_path / "acts")
    with pytest.raises(DissectError, match="precomputed activations"):
        segment(0, tmp_path / "acts" / "conv", store=ts.path)
    with pytest.raises(DissectError, match="no such file"):
        segment(tmp_path / "missing.png", out / "mix", model=MODEL)
    with pytest.raises(DissectError, match="needs --store"):
        segment("3", out / "mix", model=MODEL)
    with pytest.raises(DissectError, match="has images 0-"):
        segment(ts.n, out / "mix", store=ts.path, model=MODEL)
    with pytest.raises(DissectError, match="holds 2 layers"):
        segment(0, out, store=ts.path, model=MODEL)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DissectError, match="not an image"):
        segment(tmp_path / "bad.png", out / "mix", model=MODEL)
    with pytest.raises(DissectError, match="no such folder"):
        segment(0, tmp_path / "nothing", store=ts.path, model=MODEL)


def test_segment_command(painted, tmp_path):
    ts, out = painted
    png = tmp_path / "seg.png"
    args = ["segment", "2", "--results", str(out / "mix"), "--out", str(png), "--model", MODEL]
    r = runner.invoke(cli(), [*args, "--store", str(ts.path), "--top", "3"])
    assert r.exit_code == 0, r.output
    assert "unit 0: obj0 (object, IoU 1.000)" in r.output
    assert_png(png, (ts.images.shape[2], ts.images.shape[1]))
    r = runner.invoke(cli(), args)  # an index without --store
    assert r.exit_code == 2 and r.output.startswith("error: ") and "--store" in r.output


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_rotation_and_segmentation_on_cuda(painted, planted, tmp_path):
    ts, out = painted
    cpu = segment(2, out / "mix", store=ts.path, model=MODEL, device="cpu")
    gpu = segment(2, out / "mix", store=ts.path, model=MODEL, device="cuda")
    np.testing.assert_array_equal(cpu.masks, gpu.masks)
    pts, acts, _ = planted
    res = run_rotation(
        pts.path,
        None,
        "conv",
        7,
        (0.0, 1.0),
        S(quantile=0.03, device="cuda", progress=False),
        out=tmp_path,
        activations=acts,
    )
    assert res.rotated[1.0].summary.settings.device.startswith("cuda")
    same_counts(res.unrotated.directory, res.rotated[0.0].directory)


def test_dissect_rotate_option_runs_the_rotation_experiment(planted, tmp_path):
    from broden.cli import app as broden_app

    ts, acts, _ = planted
    out = tmp_path / "cli-rot"
    result = CliRunner().invoke(
        broden_app,
        ["dissect", str(ts.path), "--activations", str(acts), "--out", str(out),
         "--quantile", "0.03", "--workers", "0", "--rotate", "7", "--alpha", "1", "--no-report",
         "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "conv unrotated: 8 of 64 units are detectors of 8 unique concepts" in result.stdout
    assert "conv rotated (seed 7, alpha 1" in result.stdout
    rows = read_csv(out / "conv" / "rotation.csv")
    assert [r["basis"] for r in rows] == ["unrotated", "rotated"]


def test_alpha_without_rotate_is_refused(planted, tmp_path):
    from broden.cli import app as broden_app

    ts, acts, _ = planted
    result = CliRunner().invoke(
        broden_app,
        ["dissect", str(ts.path), "--activations", str(acts), "--out", str(tmp_path / "o"),
         "--alpha", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--alpha needs --rotate SEED" in result.stderr
