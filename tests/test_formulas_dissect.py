"""Compositional explanations through the dissection (``--formulas N --beam B``): a unit
planted as ``A OR B`` is explained so with IoU 1; every formula written re-evaluates, from
the store's own label arrays and the unit's mask recomputed here (thresholds.npy,
upsampling, strict >), to its recorded IoU; length-1 formulas are the best plain IoU;
``--concepts`` restricts the leaves; rotated (transformed) units are explained as
transformed; formulas are cached with the layer, off by default and leave the other
results unchanged; the same on CPU and CUDA."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect import score_activations
from broden.dissect.errors import DissectError
from broden.dissect.explain.collect import UnitAtomCounts
from broden.dissect.settings import DissectSettings
from broden.dissect.tally import upsample_reference
from tests.dissect_helpers import TinyStore, random_labels_store

N_IMAGES, L = 12, 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("formulas") / "tiny.zarr", n=N_IMAGES)


def settings(**kw: Any) -> DissectSettings:
    return DissectSettings(**{"workers": 0, "progress": False, "batch_size": 5, **kw})


def random_acts(units: int = 5, size: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N_IMAGES, units, size, size)).astype(np.float32)


def store_masks(path: Path) -> dict[str, np.ndarray]:
    """Every concept's mask (n, L, L) by name, read from the store's arrays with zarr:
    any layer of any pixel category, the whole image for a whole-image label."""
    g = zarr.open_group(str(path), mode="r")
    names = {int(c["id"]): c["name"] for c in g.attrs["concepts"]}
    pixel = [np.asarray(a[:]) for _, a in g["pixel"].arrays()] if "pixel" in g else []
    image = [np.asarray(a[:]) for _, a in g["image"].arrays()] if "image" in g else []
    out = {}
    for cid, name in names.items():
        m = np.zeros((N_IMAGES, L, L), bool)
        for arr in pixel:
            m |= (arr == cid).any(axis=1)
        for arr in image:
            m |= (arr == cid).any(axis=1)[:, None, None]
        out[name] = m
    return out


def unit_masks(acts: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(units, n, L, L): upsampled with the tally's arithmetic, strictly above the threshold."""
    t = torch.from_numpy(acts)
    return np.stack(
        [
            upsample_reference(t[:, u], L).numpy().astype(np.float64) > thresholds[u]
            for u in range(acts.shape[1])
        ]
    )


def evaluate(formula: Any, masks: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(formula, str):
        return masks[formula]
    op, inner, name = formula
    f, c = evaluate(inner, masks), masks[name]
    return {"or": f | c, "and": f & c, "and_not": f & ~c}[op]


def plain_iou(m: np.ndarray, f: np.ndarray) -> float:
    union = int((m | f).sum())
    return int((m & f).sum()) / union if union else 0.0


def leaves(formula: Any) -> list[str]:
    return [formula] if isinstance(formula, str) else [*leaves(formula[1]), formula[2]]


def read_json(directory: Path) -> list[dict[str, Any]]:
    return json.loads((directory / "formulas.json").read_text())


def concept_names(directory: Path) -> list[str]:
    with open(directory / "concepts.csv", newline="") as f:
        return [r["name"] for r in csv.DictReader(f)]


def test_planted_or_unit_gets_its_formula_with_iou_one(tiny: TinyStore, tmp_path: Path) -> None:
    masks = store_masks(tiny.path)
    acts = np.zeros((N_IMAGES, 3, L, L), np.float32)  # at label size: upsampling is exact
    acts[:, 0] = masks["obj0"] | masks["part1"]  # part1 lies in two label layers
    acts[:, 1] = random_acts(1, L)[:, 0]
    acts[:, 2] = masks["obj2"] & ~masks["col1"]
    np.save(tmp_path / "planted.npy", acts)
    res = score_activations(
        tiny.path,
        tmp_path / "planted.npy",
        settings=settings(formulas=3),
        out=tmp_path / "out",
        thresholds=np.full(3, 0.5),
    )
    rows = read_json(tmp_path / "out" / "planted")
    assert [r["unit"] for r in rows] == [0, 1, 2]
    assert rows[0]["formula"] in (["or", "obj0", "part1"], ["or", "part1", "obj0"])
    assert rows[0]["iou"] == 1.0 and rows[0]["length"] == 2
    assert rows[2]["formula"] == ["and_not", "obj2", "col1"] and rows[2]["iou"] == 1.0
    assert res.formulas is not None and res.formulas[0].formula == rows[0]["formula"]
    summary = json.loads((tmp_path / "out" / "planted" / "summary.json").read_text())
    assert summary["settings"]["formulas"] == 3 and summary["settings"]["beam"] == 5
    assert "formulas_s" in summary["timings"]


@pytest.mark.parametrize("length, beam", [(3, 5), (2, 1), (4, 3)])
def test_every_formula_reevaluates_to_its_iou(
    tiny: TinyStore, tmp_path: Path, length: int, beam: int
) -> None:
    acts = random_acts(seed=length)
    np.save(tmp_path / "a.npy", acts)
    s = settings(quantile=0.05, formulas=length, beam=beam)
    score_activations(tiny.path, tmp_path / "a.npy", settings=s, out=tmp_path / "out")
    d = tmp_path / "out" / "a"
    masks = store_masks(tiny.path)
    units = unit_masks(acts, np.load(d / "thresholds.npy"))
    rows = read_json(d)
    assert len(rows) == acts.shape[1]
    for r in rows:
        f = evaluate(r["formula"], masks)
        assert abs(plain_iou(units[r["unit"]], f) - r["iou"]) < 1e-12, r
        assert 1 <= r["length"] == len(leaves(r["formula"])) <= length
        assert set(leaves(r["formula"])) <= set(concept_names(d))
        best1 = max(plain_iou(units[r["unit"]], m) for m in masks.values())
        assert r["iou"] >= best1 - 1e-12  # a longer formula never does worse


def test_length_one_formulas_are_the_best_plain_iou(tiny: TinyStore, tmp_path: Path) -> None:
    acts = random_acts(units=6, seed=3)
    np.save(tmp_path / "a.npy", acts)
    s = settings(quantile=0.05, formulas=1)
    score_activations(tiny.path, tmp_path / "a.npy", settings=s, out=tmp_path / "out")
    d = tmp_path / "out" / "a"
    masks = store_masks(tiny.path)
    units = unit_masks(acts, np.load(d / "thresholds.npy"))
    for r in read_json(d):
        ious = {name: plain_iou(units[r["unit"]], m) for name, m in masks.items()}
        assert isinstance(r["formula"], str) and r["length"] == 1
        assert r["iou"] == pytest.approx(max(ious.values()), abs=1e-12)
        assert ious[r["formula"]] == pytest.approx(max(ious.values()), abs=1e-12)


def test_concepts_restricts_the_formulas(tiny: TinyStore, tmp_path: Path) -> None:
    acts = random_acts(seed=4)
    np.save(tmp_path / "a.npy", acts)
    s = settings(quantile=0.05, formulas=3, concepts=("object", "part"))
    score_activations(tiny.path, tmp_path / "a.npy", settings=s, out=tmp_path / "out")
    d = tmp_path / "out" / "a"
    allowed = {n for n, cat in tiny.concepts if cat in ("object", "part")}
    assert set(concept_names(d)) == allowed
    masks = store_masks(tiny.path)
    units = unit_masks(acts, np.load(d / "thresholds.npy"))
    for r in read_json(d):
        assert set(leaves(r["formula"])) <= allowed
        assert abs(plain_iou(units[r["unit"]], evaluate(r["formula"], masks)) - r["iou"]) < 1e-12


def test_transformed_units_are_explained_as_transformed(tiny: TinyStore, tmp_path: Path) -> None:
    acts = random_acts(seed=5)
    np.save(tmp_path / "a.npy", acts)
    s = settings(quantile=0.05, formulas=2)
    score_activations(tiny.path, tmp_path / "a.npy", settings=s, out=tmp_path / "plain")
    score_activations(
        tiny.path,
        tmp_path / "a.npy",
        settings=s,
        out=tmp_path / "flipped",
        unit_transform=lambda x: x.flip(1),
        transform_key="flip",
    )
    plain, flipped = read_json(tmp_path / "plain" / "a"), read_json(tmp_path / "flipped" / "a")
    U = acts.shape[1]
    for r in flipped:
        twin = plain[U - 1 - r["unit"]]
        assert (r["formula"], r["iou"]) == (twin["formula"], twin["iou"])


def test_formulas_off_by_default_and_results_unchanged(tiny: TinyStore, tmp_path: Path) -> None:
    acts = random_acts(seed=6)
    np.save(tmp_path / "a.npy", acts)
    s = settings(quantile=0.05)
    off = score_activations(tiny.path, tmp_path / "a.npy", settings=s, out=tmp_path / "off")
    on = score_activations(
        tiny.path, tmp_path / "a.npy", settings=s.replace(formulas=2), out=tmp_path / "on"
    )
    d_off, d_on = tmp_path / "off" / "a", tmp_path / "on" / "a"
    assert off.formulas is None and not (d_off / "formulas.json").exists()
    assert not (d_off / "formulas.csv").exists()
    for f in ("units.csv", "concepts.csv"):
        assert (d_off / f).read_text() == (d_on / f).read_text()
    for f in ("iou.npy", "thresholds.npy"):
        assert np.array_equal(np.load(d_off / f), np.load(d_on / f))
    with np.load(d_off / "counts.npz") as a, np.load(d_on / "counts.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    settings_off = json.loads((d_off / "summary.json").read_text())["settings"]
    assert "formulas" not in settings_off and "beam" not in settings_off
    assert on.summary.cache_key != off.summary.cache_key

    # the cache: a layer without formulas is recomputed when they are asked for, a layer
    # with them reused with them, and a run without them removes them
    again = score_activations(
        tiny.path, tmp_path / "a.npy", settings=s.replace(formulas=2), out=tmp_path / "off"
    )
    assert not again.reused and (d_off / "formulas.json").is_file()
    same = score_activations(
        tiny.path, tmp_path / "a.npy", settings=s.replace(formulas=2), out=tmp_path / "off"
    )
    assert same.reused and same.formulas is not None and again.formulas is not None
    assert [e.formula for e in same.formulas] == [e.formula for e in again.formulas]
    assert json.loads((d_off / "summary.json").read_text())["settings"]["formulas"] == 2
    other_beam = score_activations(
        tiny.path, tmp_path / "a.npy", settings=s.replace(formulas=2, beam=2), out=tmp_path / "off"
    )
    assert not other_beam.reused
    score_activations(tiny.path, tmp_path / "a.npy", settings=s, out=tmp_path / "off")
    assert not (d_off / "formulas.json").exists() and not (d_off / "formulas.csv").exists()


def test_cli_writes_formulas_csv(tiny: TinyStore, tmp_path: Path) -> None:
    np.save(tmp_path / "conv5.npy", random_acts(units=4, seed=7))
    out = tmp_path / "out"
    args = ["dissect", str(tiny.path), "--activations", str(tmp_path / "conv5.npy")]
    r = CliRunner().invoke(
        app, [*args, "--out", str(out), "--quantile", "0.05", "--formulas", "2", "--beam", "3",
              "--workers", "0", "--no-report", "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(out / "conv5" / "formulas.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["unit", "formula", "iou", "length"]
    by_json = read_json(out / "conv5")
    assert [int(x["unit"]) for x in rows] == [0, 1, 2, 3]
    for row, js in zip(rows, by_json, strict=True):
        assert float(row["iou"]) == js["iou"] and int(row["length"]) == js["length"]
        assert all(name in row["formula"] for name in leaves(js["formula"]))
        if js["length"] == 2:
            op = {"or": " OR ", "and": " AND ", "and_not": " AND NOT "}[js["formula"][0]]
            assert row["formula"] == f"({js['formula'][1]}{op}{js['formula'][2]})"


@pytest.mark.parametrize(
    "option, value, phrase",
    [("--formulas", "-1", "--formulas must be 0 (off) or more"), ("--beam", "0", "--beam must be")],
)
def test_cli_rejects_bad_formula_options(
    tiny: TinyStore, tmp_path: Path, option: str, value: str, phrase: str
) -> None:
    np.save(tmp_path / "a.npy", random_acts())
    args = ["dissect", str(tiny.path), "--activations", str(tmp_path / "a.npy")]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), option, value, "-q"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and phrase in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_formulas_refused_under_torchrun() -> None:
    with pytest.raises(DissectError, match="--distributed"):
        DissectSettings(formulas=2, distributed=True)


def test_unit_atom_counts_merge_exactly() -> None:
    counts = UnitAtomCounts(3)
    rng = np.random.default_rng(0)
    units = rng.integers(0, 3, size=5000)
    atoms = rng.integers(0, 50, size=5000)
    for a in range(0, 5000, 700):  # chunks, merged in between
        counts.add(torch.from_numpy(units[a : a + 700]), torch.from_numpy(atoms[a : a + 700]))
        counts._merge()
    for u, got_atoms, weight in counts.per_unit():
        want = np.bincount(atoms[units == u], minlength=50)
        assert np.array_equal(got_atoms, np.flatnonzero(want))
        assert np.array_equal(weight, want[want > 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_give_the_same_formulas(tiny: TinyStore, tmp_path: Path) -> None:
    acts = random_acts(units=8, seed=8)
    np.save(tmp_path / "a.npy", acts)
    for device in ("cpu", "cuda"):
        s = settings(quantile=0.05, formulas=3, device=device)
        score_activations(tiny.path, tmp_path / "a.npy", settings=s, out=tmp_path / device)
    assert read_json(tmp_path / "cpu" / "a") == read_json(tmp_path / "cuda" / "a")


def test_model_dissection_writes_formulas_and_the_report_shows_them(tmp_path: Path) -> None:
    import html

    from broden.dissect import dissect
    from broden.dissect.report import write_report
    from tests.test_report import MODEL, tiny_store

    store, _ = tiny_store(tmp_path / "tiny.zarr")
    out = tmp_path / "out"
    res = dissect(store, MODEL, ["conv", "pool"], settings(quantile=0.02, formulas=2), out=out)
    for layer in ("conv", "pool"):
        rows = read_json(out / layer)
        assert [r["unit"] for r in rows] == [0, 1, 2, 3]
        assert res[layer].formulas is not None
        assert all(set(leaves(r["formula"])) <= set(concept_names(out / layer)) for r in rows)
    page = write_report(out, progress=False).read_text()
    with open(out / "conv" / "formulas.csv", newline="") as f:
        text = next(csv.DictReader(f))["formula"]
    assert '<div class="formula"' in page and html.escape(text, quote=False) in page
    assert "<script>alert" not in page
    # hovering a formula shows its mask: one strip per unit that has a formula
    strips = sorted(p.name for p in (out / "report_files").rglob("*-formula.jpg"))
    assert len(strips) == 8 and page.count('class="fm"') == 8


def test_formulas_alike_whether_the_layers_share_their_passes(tmp_path: Path) -> None:
    """Given thresholds for one layer (tallied in pass 1, which builds the concept masks)
    and computed ones for the other (pass 2, which finds them built): the same formulas
    as each layer dissected alone."""
    from broden.dissect import dissect
    from tests.test_report import MODEL, tiny_store

    store, _ = tiny_store(tmp_path / "tiny.zarr")
    s = settings(quantile=0.02, formulas=2, batch_size=4)
    alone = {
        la: dissect(store, MODEL, [la], s, out=tmp_path / f"alone-{la}")[la]
        for la in ("conv", "pool")
    }
    given = {"conv": alone["conv"].thresholds}
    both = dissect(store, MODEL, ["conv", "pool"], s, out=tmp_path / "both", thresholds=given)
    assert both["conv"].summary.settings.thresholds == "given"
    for la in ("conv", "pool"):
        assert read_json(tmp_path / "both" / la) == read_json(tmp_path / f"alone-{la}" / la)


def test_report_formula_mask_is_the_formulas_pixels(tiny: TinyStore) -> None:
    from broden.dissect.report.images import formula_image_mask
    from broden.store import open_store

    store = open_store(tiny.path)
    ids = {name: i for i, (name, _) in enumerate(tiny.concepts, start=1)}
    masks = store_masks(tiny.path)
    formula = ["and_not", ["or", "obj0", "scene1"], "part1"]
    for i in range(N_IMAGES):
        got = formula_image_mask(*store.labels(i), formula, ids, L)
        assert np.array_equal(got, evaluate(formula, masks)[i])
        doubled = formula_image_mask(*store.labels(i), formula, ids, 2 * L)
        assert np.array_equal(doubled, got.repeat(2, 0).repeat(2, 1))  # nearest neighbour
