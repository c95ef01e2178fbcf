"""The tally and scoring against known answers and against the slow reference
implementation (tests/dissect_helpers.py), through ``broden.dissect.score_activations``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from broden.dissect import score_activations
from broden.dissect.settings import DissectSettings
from broden.dissect.synthetic import write_store
from broden.dissect.tally import upsample_reference
from tests.dissect_helpers import TinyStore, random_labels_store, ref_upsample, reference

MODES = ("original", "lite", "plain")


def score(store, acts, tmp_path: Path, thresholds=None, **settings):
    """score_activations into a new folder, with ``settings`` (in-process data loading)."""
    out = tmp_path / f"out{np.random.default_rng().integers(1 << 30)}"
    s = DissectSettings(**{"workers": 0, "progress": False, **settings})
    return score_activations(store, acts, None, s, out=out, thresholds=thresholds)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyStore:
    return random_labels_store(tmp_path_factory.mktemp("tiny") / "tiny.zarr")


# -- a hand-made store with answers computed by hand -------------------------------------------

DOG, CAT, LEG, STREET, BEACH = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> TinyStore:
    """6 images, labels 8×8: object (dog, cat), part (leg), scene (street, beach)."""
    L = 8
    obj = np.zeros((6, 1, L, L), np.uint16)
    part = np.zeros((6, 1, L, L), np.uint16)
    scene = np.zeros((6, 1), np.uint16)
    obj[0, 0, 0:2] = DOG  # 16 px
    part[0, 0, 0, 0:4] = LEG  # 4 px
    obj[1, 0, 4:8] = CAT  # 32 px
    obj[3, 0, 7] = DOG  # 8 px
    obj[4, 0, 0:4] = CAT  # 32 px
    scene[[0, 1, 2], 0] = STREET
    scene[[3, 5], 0] = BEACH
    concepts = [
        ("dog", "object"),
        ("cat", "object"),
        ("leg", "part"),
        ("street-s", "scene"),
        ("beach-s", "scene"),
    ]
    images = np.zeros((6, 16, 16, 3), np.uint8)
    path = tmp_path_factory.mktemp("hand") / "hand.zarr"
    pixel = {"object": obj, "part": part}
    write_store(path, images, pixel, {"scene": scene}, concepts, shard_size=4)
    return TinyStore(path, images, pixel, {"scene": scene}, concepts)


def handmade_units(ts: TinyStore) -> np.ndarray:
    acts = np.zeros((6, 4, 8, 8))
    acts[:, 0] = ts.pixel["object"][:, 0] == DOG  # a copy of the dog mask
    acts[[0, 1, 2], 1] = 1.0  # constant on the street images
    # unit 2 never fires; unit 3 covers the lower half of images 0 (no object there) and 1 (cat)
    acts[[0, 1], 3, 4:8] = 1.0
    return acts


@pytest.mark.parametrize("mode", MODES)
def test_unit_copying_a_concept_mask_scores_iou_one(handmade, tmp_path, mode):
    r = score(
        handmade.path,
        handmade_units(handmade),
        tmp_path,
        thresholds=np.full(4, 0.5),
        unit_area=mode,
    )
    col = {cid: j for j, (cid, _, _) in enumerate(r.concepts)}
    assert r.iou[0, col[DOG]] == 1.0
    assert r.unit_labels()[0] == {"unit": 0, "label": "dog", "category": "object", "iou": 1.0}


def test_unit_constant_on_a_scene_scores_the_hand_computed_ious(handmade, tmp_path):
    acts = handmade_units(handmade)
    got = {
        m: score(handmade.path, acts, tmp_path, thresholds=np.full(4, 0.5), unit_area=m)
        for m in MODES
    }
    col = {cid: j for j, (cid, _, _) in enumerate(got["original"].concepts)}
    u = 1  # active on all 64 pixels of images 0, 1, 2 (the street images)
    # scene: 192 px intersect, 192 px street, unit area 192 over images with a scene
    for m in MODES:
        assert got[m].iou[u, col[STREET]] == 1.0
        assert got[m].iou[u, col[BEACH]] == 0.0
    # dog: 16 px in image 0; dog area 24; images with an object label among 0-2: 0 and 1
    assert got["original"].iou[u, col[DOG]] == pytest.approx(16 / (128 + 24 - 16))
    assert got["lite"].iou[u, col[DOG]] == pytest.approx(16 / (128 + 24 - 16))
    assert got["plain"].iou[u, col[DOG]] == pytest.approx(16 / (192 + 24 - 16))
    assert got["original"].iou[u, col[CAT]] == pytest.approx(32 / (128 + 64 - 32))
    # leg: only image 0 has a part label
    assert got["original"].iou[u, col[LEG]] == pytest.approx(4 / (64 + 4 - 4))
    assert got["plain"].iou[u, col[LEG]] == pytest.approx(4 / (192 + 4 - 4))
    lab = got["original"].unit_labels()[u]
    assert (lab["label"], lab["category"], lab["iou"]) == ("street-s", "scene", 1.0)


def test_lite_counts_only_images_where_the_unit_touches_the_category(handmade, tmp_path):
    acts = handmade_units(handmade)
    got = {
        m: score(handmade.path, acts, tmp_path, thresholds=np.full(4, 0.5), unit_area=m)
        for m in MODES
    }
    col = {cid: j for j, (cid, _, _) in enumerate(got["original"].concepts)}
    # unit 3: 32 px in image 0 (away from the dog) and 32 px on the cat of image 1
    assert got["original"].iou[3, col[CAT]] == pytest.approx(32 / (64 + 64 - 32))
    assert got["plain"].iou[3, col[CAT]] == pytest.approx(32 / (64 + 64 - 32))
    assert got["lite"].iou[3, col[CAT]] == pytest.approx(32 / (32 + 64 - 32))


def test_unit_never_above_threshold_scores_zero(handmade, tmp_path):
    r = score(handmade.path, handmade_units(handmade), tmp_path, thresholds=np.full(4, 0.5))
    assert not r.iou[2].any()
    assert r.unit_labels()[2] == {"unit": 2, "label": "", "category": "", "iou": 0.0}
    assert not r.counts["intersection"][2].any()
    assert not r.counts["unit_area_plain"][2].any()


# -- the reference implementation -----------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "ndl"])
@pytest.mark.parametrize("quantile", [0.005, 0.2])
def test_engine_matches_the_reference_implementation(tiny, tmp_path, method, quantile):
    rng = np.random.default_rng(7)
    acts = rng.normal(size=(tiny.n, 5, 5, 5))
    ref = reference(tiny, acts, quantile, method)
    for mode in MODES:
        r = score(
            tiny.path, acts, tmp_path, quantile=quantile, quantile_method=method, unit_area=mode
        )
        assert r.categories == ref.categories
        np.testing.assert_allclose(r.thresholds, ref.thresholds, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(r.counts["intersection"], ref.intersection)
        np.testing.assert_array_equal(r.counts["concept_area"], ref.concept_area)
        for m in MODES:
            np.testing.assert_array_equal(r.counts[f"unit_area_{m}"], ref.unit_area[m])
        np.testing.assert_allclose(r.iou, ref.iou[mode], rtol=0, atol=1e-9)
        assert r.iou.max() > 0


@pytest.mark.parametrize("shape", [(7, 7), (16, 16), (20, 20), (1, 1), (4, 6)])
def test_engine_matches_the_reference_at_any_resolution(tiny, tmp_path, shape):
    rng = np.random.default_rng(sum(shape))
    acts = rng.normal(size=(tiny.n, 3, *shape))
    ref = reference(tiny, acts, 0.15, "exact")
    r = score(tiny.path, acts, tmp_path, quantile=0.15)
    np.testing.assert_array_equal(r.counts["intersection"], ref.intersection)
    for m in MODES:
        np.testing.assert_array_equal(r.counts[f"unit_area_{m}"], ref.unit_area[m])
    np.testing.assert_allclose(r.iou, ref.iou["original"], rtol=0, atol=1e-9)


def test_upsampling_is_torch_bilinear_with_half_pixel_centres():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 7, 5))
    ours = upsample_reference(torch.from_numpy(maps), 16).numpy()
    torch_ = F.interpolate(
        torch.from_numpy(maps)[:, None], size=(16, 16), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(ours, torch_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[1], ref_upsample(maps[1], 16), rtol=0, atol=1e-12)


# -- invariances ------------------------------------------------------------------------------


def test_results_do_not_depend_on_image_order(tiny, tmp_path):
    rng = np.random.default_rng(11)
    acts = rng.normal(size=(tiny.n, 4, 6, 6))
    perm = rng.permutation(tiny.n)
    shuffled = random_labels_store(tmp_path / "shuffled.zarr", order=perm)
    a = score(tiny.path, acts, tmp_path, quantile=0.1, unit_area="lite")
    b = score(shuffled.path, acts[perm], tmp_path, quantile=0.1, unit_area="lite")
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    for k in a.counts:
        np.testing.assert_array_equal(a.counts[k], b.counts[k])
    np.testing.assert_array_equal(a.iou, b.iou)
    # store index i of the shuffled store is image perm[i] of the original
    np.testing.assert_array_equal(perm[b.top_indices], a.top_indices)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_size_does_not_change_any_count(tiny, tmp_path, dtype):
    rng = np.random.default_rng(5)
    acts = np.maximum(rng.normal(size=(tiny.n, 6, 7, 7)), 0).astype(dtype)  # ReLU-like
    one = score(tiny.path, acts, tmp_path, batch_size=1, quantile=0.05)
    many = score(tiny.path, acts, tmp_path, batch_size=32, quantile=0.05)
    np.testing.assert_array_equal(one.thresholds, many.thresholds)
    for k in one.counts:
        np.testing.assert_array_equal(one.counts[k], many.counts[k])
    np.testing.assert_array_equal(one.top_indices, many.top_indices)
    assert one.counts["intersection"].sum() > 0


def test_concept_subset_keeps_each_concepts_iou(tiny, tmp_path):
    rng = np.random.default_rng(9)
    acts = rng.normal(size=(tiny.n, 4, 5, 5))
    full = score(tiny.path, acts, tmp_path, quantile=0.2)
    sub = score(tiny.path, acts, tmp_path, quantile=0.2, concepts=["object", "part2", "scene1"])
    ids = [c[0] for c in sub.concepts]
    assert ids == [8, 10, 11, 12, 13, 14, 16]
    cols = [j for j, c in enumerate(full.concepts) if c[0] in ids]
    np.testing.assert_array_equal(sub.iou, full.iou[:, cols])
    assert sub.categories == ["part", "object", "scene"]


def test_cells_compute_exactly_the_full_float32_upsampling(tiny, tmp_path):
    rng = np.random.default_rng(12)
    acts = np.maximum(rng.normal(size=(tiny.n, 5, 3, 4)), 0).astype(np.float32)
    thr = np.quantile(acts.transpose(1, 0, 2, 3).reshape(5, -1).astype(np.float64), 0.8, axis=1)
    r = score(tiny.path, acts, tmp_path, thresholds=thr)
    L = tiny.label_size
    up = upsample_reference(torch.from_numpy(acts).reshape(-1, 3, 4), L).reshape(tiny.n, 5, L, L)
    assert up.dtype == torch.float32
    mask = up.double().numpy() > thr[None, :, None, None]
    np.testing.assert_array_equal(r.counts["unit_area_plain"][:, 0], mask.sum(axis=(0, 2, 3)))


def test_zarr_and_npy_activation_files_score_alike(tiny, tmp_path):
    import zarr

    acts = np.random.default_rng(13).normal(size=(tiny.n, 3, 4, 4)).astype(np.float32)
    z = zarr.create_array(tmp_path / "conv.zarr", shape=acts.shape, chunks=(5, 3, 4, 4),
                          dtype="float32")  # fmt: skip
    z[:] = acts
    np.save(tmp_path / "conv.npy", acts)
    a = score(tiny.path, tmp_path / "conv.zarr", tmp_path, quantile=0.1)
    b = score(tiny.path, tmp_path / "conv.npy", tmp_path, quantile=0.1)
    assert a.layer == b.layer == "conv"
    np.testing.assert_array_equal(a.counts["intersection"], b.counts["intersection"])
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
