"""Dissecting the images of some sources only (``sources=`` / ``--sources``): the same
results as a store built from those images alone, the settings and the cache key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from broden.cli import app
from broden.dissect import DissectError, dissect, score_activations
from broden.dissect.data import batch_plan, runs
from broden.dissect.settings import DissectSettings as S
from broden.dissect.synthetic import write_store
from tests.dissect_helpers import TinyStore, random_labels_store, reference

N = 17
MODEL = "dissect.zoo:resnet18"
#: images of the "old" source: not one run (so batches hold several runs of a shard)
OLD = np.array([i for i in range(N) if i % 4 != 1], np.int64)


def _write(path: Path, ts: TinyStore, rows: np.ndarray, sources: list[str], shard: int) -> Path:
    return write_store(
        path,
        ts.images[rows],
        {k: v[rows] for k, v in ts.pixel.items()},
        {k: v[rows] for k, v in ts.image_labels.items()},
        ts.concepts,
        shard_size=shard,
        sources=sources,
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[TinyStore, Path, Path]:
    """(the labels, a store of every image from sources old/new, one of the old images)."""
    d = tmp_path_factory.mktemp("sources")
    ts = random_labels_store(d / "base.zarr", n=N, seed=3)
    names = ["old" if i in set(OLD.tolist()) else "new" for i in range(N)]
    both = _write(d / "both.zarr", ts, np.arange(N), names, shard=5)
    old = _write(d / "old.zarr", ts, OLD, ["old"] * len(OLD), shard=4)
    return ts, both, old


def test_batches_of_a_selection_stay_in_one_shard(stores):
    _, both, _ = stores
    from broden.store import open_store

    st = open_store(both)
    plan = batch_plan(st, 3, OLD)
    assert np.array_equal(np.concatenate(plan), OLD)
    assert all(len(b) <= 3 and len(set(b // st.shard_size)) == 1 for b in plan)
    assert runs(np.array([0, 2, 3, 4, 7])) == [(0, 1), (2, 5), (7, 8)]
    assert batch_plan(st, 3, np.zeros(0, np.int64)) == []


def test_a_selection_scores_like_a_store_of_those_images(stores, tmp_path):
    ts, both, old = stores
    rng = np.random.default_rng(1)
    acts = np.maximum(rng.normal(size=(N, 6, 5, 5)), 0).astype(np.float32)
    s = S(quantile=0.05, batch_size=3, progress=False, top_k=4)
    sub = score_activations(old, acts[OLD], None, s, out=tmp_path / "old")
    sel = score_activations(both, acts, None, s.replace(sources="old"), out=tmp_path / "sel")
    assert np.array_equal(sel.iou, sub.iou)
    assert np.array_equal(sel.thresholds, sub.thresholds)
    for k, v in sub.counts.items():
        assert np.array_equal(sel.counts[k], v), k
    # top images: the same images, by their index in each store
    assert np.array_equal(sel.top_indices, OLD[sub.top_indices])
    assert np.array_equal(sel.top_values, sub.top_values)
    assert (sel.directory / "iou.npy").read_bytes() == (sub.directory / "iou.npy").read_bytes()
    # and the definitions, computed independently over the old images
    want = reference(
        TinyStore(
            old,
            ts.images[OLD],
            {k: v[OLD] for k, v in ts.pixel.items()},
            {k: v[OLD] for k, v in ts.image_labels.items()},
            ts.concepts,
        ),
        acts[OLD].astype(np.float64),
        quantile=0.05,
    )
    np.testing.assert_allclose(sel.thresholds, want.thresholds, rtol=1e-6)
    np.testing.assert_array_equal(sel.counts["intersection"], want.intersection)
    # activations holding only the selected rows give the same
    rows = score_activations(
        both, acts[OLD], None, s.replace(sources=["old"]), out=tmp_path / "rows"
    )
    assert np.array_equal(rows.iou, sel.iou)
    s = sel.summary
    assert s.settings.sources == ["old"]
    assert s.store.images == N and s.store.dissected_images == len(OLD)


def test_old_sources_of_an_extended_store_give_the_old_results(tmp_path):
    """The use case: a store extended with `broden add` (new sources appended, some into
    the old last shard; new concepts), dissected with --sources of the old sources and
    the old concepts, writes byte for byte the files of the old store's dissection."""
    import shutil

    from broden import add, build, open_store, parse_config
    from broden.config import load_config
    from tests.conftest import SAMPLES
    from tests.test_extend import coco_config

    cfg = load_config(SAMPLES / "broden-sample.yaml").model_copy(update={"shard_size": 8})
    build(cfg, tmp_path / "old.zarr", progress=False)  # 26 images: the last shard holds 2
    shutil.copytree(tmp_path / "old.zarr", tmp_path / "ext.zarr")
    add(tmp_path / "ext.zarr", parse_config(coco_config(tmp_path)), progress=False)
    old, ext = open_store(tmp_path / "old.zarr"), open_store(tmp_path / "ext.zarr")
    assert len(ext) > len(old) and len(ext.concepts) > len(old.concepts)
    s = S(batch_size=8, workers=0, progress=False, top_k=3)
    dissect(old.path, MODEL, ["layer1"], s, out=tmp_path / "a")
    subset = s.replace(
        sources=[s.name for s in old.attrs.sources], concepts=[f"id:{c.id}" for c in old.concepts]
    )
    dissect(ext.path, MODEL, ["layer1"], subset, out=tmp_path / "b")
    for f in ("iou.npy", "thresholds.npy", "units.csv", "counts.npz", "topk.npz", "concepts.csv"):
        assert (tmp_path / "a" / "layer1" / f).read_bytes() == (
            tmp_path / "b" / "layer1" / f
        ).read_bytes(), f


def test_sources_are_in_the_cache_key(stores, tmp_path):
    _, both, _ = stores
    acts = np.random.default_rng(2).normal(size=(N, 3, 4, 4)).astype(np.float32)
    s = S(quantile=0.1, progress=False)

    def score(sources: object) -> object:
        return score_activations(both, acts, "x", s.replace(sources=sources), out=tmp_path)

    a = score("old")
    assert not a.reused
    b = score(None)  # every image: recomputed
    assert not b.reused and not np.array_equal(a.counts["concept_area"], b.counts["concept_area"])
    assert score(None).reused
    c = score("OLD,old")  # the same selection
    assert not c.reused and np.array_equal(c.iou, a.iou)
    assert score(["old"]).reused
    assert a.summary.cache_key != b.summary.cache_key == score(None).summary.cache_key


def test_unknown_sources_name_the_stores_sources(stores, tmp_path):
    _, both, _ = stores
    acts = np.zeros((N, 2, 3, 3), np.float32)
    with pytest.raises(DissectError, match=r"unknown source names \['nope'\].*\['old', 'new'\]"):
        score_activations(both, acts, None, S(sources="old,nope", progress=False), out=tmp_path)
    with pytest.raises(DissectError, match="hold 5 images .* has 17 \\(13 of --sources old\\)"):
        score_activations(both, acts[:5], None, S(sources="old", progress=False), out=tmp_path)


def test_sources_from_the_command_line(stores, tmp_path):
    _, both, _ = stores
    np.save(tmp_path / "conv.npy", np.random.default_rng(0).normal(size=(N, 4, 3, 3)))
    base = ["dissect", str(both), "--activations", str(tmp_path / "conv.npy"), "-q"]
    r = CliRunner().invoke(
        app, [*base, "--out", str(tmp_path / "o"), "--sources", "new", "--sources", "old,new"]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "conv" / "summary.json").read_text())
    assert summary["settings"]["sources"] == ["new", "old"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "p"), "--sources", "ade"])
    assert r.exit_code == 2 and r.output.startswith("error: --sources: unknown source names")
    assert "['old', 'new']" in r.output
