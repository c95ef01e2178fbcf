"""The significance test of unit labels (broden.dissect.significance, _image): the null
moments against exact enumeration, the streaming sums against one-shot sums, and the
calibration of the whole procedure by simulation on synthetic 16 × 16 label maps.

Calibration: under a null, the fraction of units whose label is significant at α = 0.05
must be at most ``α + 3 √(α (1 - α) / n)`` (a binomial upper bound over n units); the
measured rates are printed (``pytest -s``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from broden.dissect.significance import (
    LocalisationAccumulator,
    LocalisationTest,
    adjust_p_values,
    combine_tests,
    concept_pixel_moments,
    hypergeometric_moments,
    label_significance,
)
from broden.dissect.significance_image import mann_whitney, tie_correction

L, N, C, K, U = 16, 200, 8, 2, 300
P = L * L
ALPHA = 0.05


def upper_bound(n: int, alpha: float = ALPHA) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / n)


# --- synthetic data ------------------------------------------------------------------


def blobs(rng: np.random.Generator, n: int, wrap: bool) -> np.ndarray:
    """n random discs (radius 1.5-5 pixels) on L × L; ``wrap``: on a torus (every pixel
    equally likely to be covered), else clipped at the edges."""
    yy, xx = np.mgrid[:L, :L]
    cy, cx = rng.uniform(0, L, (2, n, 1, 1))
    r = rng.uniform(1.5, 5, (n, 1, 1))
    dy, dx = np.abs(yy + 0.5 - cy), np.abs(xx + 0.5 - cx)
    if wrap:
        dy, dx = np.minimum(dy, L - dy), np.minimum(dx, L - dx)
    return dy**2 + dx**2 < r * r


def label_maps(rng: np.random.Generator, wrap: bool) -> np.ndarray:
    """(N, K, L, L) labels, column c stored as c + 1: concepts 0-3 in layer 0, 4-7 in
    layer 1, and concept 0 in layer 1 too (so a pixel can carry it twice)."""
    lab = np.zeros((N, K, L, L), np.int64)
    for c, layer in [(c, int(c >= 4)) for c in range(C)] + [(0, 1)]:
        present = rng.random(N) < rng.uniform(0.15, 0.6)
        lab[:, layer][blobs(rng, N, wrap) & present[:, None, None]] = c + 1
    return lab


def multiplicity(lab: np.ndarray) -> np.ndarray:
    """(N, P, C): how many layers label each pixel with each concept."""
    flat = lab.reshape(lab.shape[0], lab.shape[1], -1)
    return (flat[..., None] == np.arange(1, C + 1)).sum(axis=1).astype(np.float64)


def tally_counts(active: np.ndarray, lab: np.ndarray) -> dict[str, np.ndarray]:
    """What the tally has per image, defined as it defines them: ``a`` (N, U), ``b`` and
    ``q`` (N, C), ``x`` (N, U, C) active pixels carrying c summed over layers."""
    m = multiplicity(lab)
    b, q = concept_pixel_moments(lab, C)
    x = np.einsum("iup,ipc->iuc", active.astype(np.float64), m)
    return {"a": active.sum(axis=2), "b": b.numpy(), "q": q.numpy(), "x": x}


def localisation(counts: dict[str, np.ndarray], **kw: object) -> LocalisationTest:
    acc = LocalisationAccumulator(counts["a"].shape[1], C, L)
    acc.add(counts["a"], counts["b"], intersection=counts["x"], concept_squares=counts["q"])
    return acc.result(**kw)  # type: ignore[arg-type]


def iou_labels(counts: dict[str, np.ndarray]) -> np.ndarray:
    inter = counts["x"].sum(axis=0)
    area = counts["a"].sum(axis=0)[:, None] + counts["b"].sum(axis=0)[None, :] - inter
    return np.where(area > 0, inter / np.maximum(area, 1), 0).argmax(axis=1)


def random_pixel_units(rng: np.random.Generator) -> np.ndarray:
    """(N, U, P) masks: unit u is active in an image with probability s_u, then on a
    uniformly random set of 1..n_u pixels (n_u from 2 to 60: some units are rare)."""
    rate = rng.uniform(0.05, 0.9, U)
    most = rng.integers(2, 61, U)
    a = np.where(rng.random((N, U)) < rate, rng.integers(1, 61, (N, U)) % most + 1, 0)
    order = rng.random((N, U, P)).argsort(axis=2).argsort(axis=2)
    return order < a[..., None]


def planted_units(rng: np.random.Generator, lab: np.ndarray, wrap: bool) -> np.ndarray:
    """(N, U, P) masks of planted detectors: unit u's mask is concept c_u's mask where the
    image has c_u, else a random blob."""
    m = multiplicity(lab) > 0
    concept = rng.integers(0, C, U)
    own = m[:, :, concept].transpose(0, 2, 1)
    other = blobs(rng, N * U, wrap).reshape(N, U, P)
    return np.where(own.any(axis=2, keepdims=True), own, other)


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240601)
    lab = label_maps(rng, wrap=True)
    planted = planted_units(rng, lab, wrap=True)
    perm = np.stack([rng.permutation(N) for _ in range(U)], axis=1)  # per unit
    shuffled = planted[perm, np.arange(U)[None, :]]
    clipped_lab = label_maps(rng, wrap=False)  # blobs clipped at the edges: positional bias
    clipped = planted_units(rng, clipped_lab, wrap=False)[perm, np.arange(U)[None, :]]
    return {
        "lab": lab,
        "random": random_pixel_units(rng),
        "planted": planted,
        "shuffled": shuffled,
        "clipped_lab": clipped_lab,
        "clipped": clipped,
    }


# --- the null moments ----------------------------------------------------------------


@pytest.mark.parametrize("m", [[0, 1, 1, 0, 1, 0, 0], [0, 1, 2, 0, 1, 0, 3], [1] * 7])
def test_moments_equal_exact_enumeration(m: list[int]) -> None:
    pop = np.array(m, np.float64)
    P7, b, q = len(m), pop.sum(), (pop**2).sum()
    for a in range(P7 + 1):
        sums = np.array([pop[list(s)].sum() for s in itertools.combinations(range(P7), a)])
        mean, var = hypergeometric_moments(a, b, P7, q)
        assert mean == pytest.approx(sums.mean(), abs=1e-12)
        assert var == pytest.approx(sums.var(), abs=1e-12)
        if max(m) <= 1:  # 0/1: the hypergeometric, q defaulting to b
            assert hypergeometric_moments(a, b, P7)[1] == pytest.approx(sums.var(), abs=1e-12)


def test_summed_moments_match_simulation_over_images() -> None:
    rng = np.random.default_rng(1)
    pops = [rng.integers(0, 3, 9).astype(np.float64) for _ in range(3)]
    a = [2, 5, 7]
    draws = np.zeros(40000)
    for pop, ai in zip(pops, a, strict=True):  # a random ai-subset of the 9 pixels
        draws += pop[rng.random((draws.size, 9)).argsort(axis=1)[:, :ai]].sum(axis=1)
    acc = LocalisationAccumulator(1, 1, 3)
    bq = np.array([[p.sum(), (p**2).sum()] for p in pops])
    acc.add(np.array(a)[:, None], bq[:, :1], concept_squares=bq[:, 1:])
    t = acc.result(np.array([[0.0]]), min_variance=0, min_images=0)
    assert t.expected[0, 0] == pytest.approx(draws.mean(), rel=0.01)
    assert t.variance[0, 0] == pytest.approx(draws.var(), rel=0.03)


def test_concept_pixel_moments_count_layers_as_the_tally_does() -> None:
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 4, (5, 3, 6, 6))
    b, q = concept_pixel_moments(torch.as_tensor(lab), 3)
    m = multiplicity(lab)[:, :, :3]
    np.testing.assert_array_equal(b.numpy(), m.sum(axis=1))
    np.testing.assert_array_equal(q.numpy(), (m**2).sum(axis=1))


def test_counts_above_p_need_the_squares() -> None:
    acc = LocalisationAccumulator(1, 1, 2)
    with pytest.raises(ValueError, match="concept_squares"):
        acc.add(np.array([[1]]), np.array([[5]]))
    acc.add(np.array([[1]]), np.array([[3]]), concept_squares=np.array([[3]]))
    with pytest.raises(ValueError, match="per-image"):
        acc.add(np.array([[1]]), np.array([[1]]), intersection=np.ones((1, 1, 1)))


# --- streaming -----------------------------------------------------------------------


def batches(counts: dict[str, np.ndarray], order: np.ndarray, sizes: list[int]) -> list:
    out, start = [], 0
    for s in sizes:
        idx = order[start : start + s]
        out.append({k: v[idx] for k, v in counts.items()})
        start += s
    return out


def same(t1: LocalisationTest, t2: LocalisationTest) -> None:
    for name in ("intersection", "expected", "variance", "variance_hypergeometric", "p_value"):
        np.testing.assert_allclose(getattr(t1, name), getattr(t2, name), rtol=1e-9, atol=1e-300)
    np.testing.assert_array_equal(t1.tested, t2.tested)


def test_batches_in_any_split_and_order_equal_one_shot(world: dict) -> None:
    counts = tally_counts(world["random"][:, :40], world["lab"])
    whole = localisation(counts)
    rng = np.random.default_rng(3)
    for sizes in ([N], [1] * 7 + [N - 7], [64, 64, 64, 8], [37, 100, 63]):
        acc = LocalisationAccumulator(40, C, L)
        for batch in batches(counts, rng.permutation(N), sizes):
            sparse = rng.random() < 0.5  # the same batch as (image, unit, concept, count)
            x = tuple(batch["x"].nonzero()) + (batch["x"][batch["x"] > 0],) if sparse else None
            acc.add(
                torch.as_tensor(batch["a"]) if rng.random() < 0.5 else batch["a"],
                batch["b"],
                intersection=x if sparse else batch["x"],
                concept_squares=batch["q"],
            )
        same(acc.result(), whole)
        same(acc.result(counts["x"].sum(axis=0)), whole)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_accumulates_on_the_tally_device(world: dict) -> None:
    counts = tally_counts(world["random"][:, :40], world["lab"])
    acc = LocalisationAccumulator(40, C, L)
    i, u, c = (torch.as_tensor(v).cuda() for v in counts["x"].nonzero())
    x = (i, u, c, torch.as_tensor(counts["x"][counts["x"] > 0]).cuda())
    a, b = (torch.as_tensor(counts[k]).cuda() for k in "ab")
    acc.add(a, b, x, counts["q"])
    assert acc.sums["expected"].is_cuda
    same(acc.result(), localisation(counts))


def test_merge_of_two_halves_equals_the_whole(world: dict) -> None:
    counts = tally_counts(world["planted"][:, :40], world["lab"])
    halves = []
    for idx in (np.arange(0, 120), np.arange(120, N)):
        acc = LocalisationAccumulator(40, C, L)
        acc.add(counts["a"][idx], counts["b"][idx], counts["x"][idx], counts["q"][idx])
        halves.append(acc)
    empty = LocalisationAccumulator(40, C, L)
    empty.merge(halves[0])
    empty.merge(halves[1])
    same(empty.result(), localisation(counts))
    assert empty.images == N


def test_result_refuses_an_intersection_that_is_not_the_per_image_sum(world: dict) -> None:
    counts = tally_counts(world["random"][:, :5], world["lab"])
    acc = LocalisationAccumulator(5, C, L)
    acc.add(counts["a"], counts["b"], counts["x"], counts["q"])
    with pytest.raises(ValueError, match="differs"):
        acc.result(counts["x"].sum(axis=0) + 3)


# --- calibration ---------------------------------------------------------------------


def report(name: str, n: int, rate: float) -> None:
    print(f"\n{name}: n = {n}, rate = {rate:.4f} (bound {upper_bound(n):.4f})")


def test_random_pixel_units_are_calibrated(world: dict) -> None:
    counts = tally_counts(world["random"], world["lab"])
    for variance in ("max", "hypergeometric"):
        t = localisation(counts, variance=variance)
        p = t.p_value[t.tested]
        report(f"random pixels, raw p < 0.05 ({variance})", p.size, float((p < ALPHA).mean()))
        assert 0.015 < (p < ALPHA).mean() <= upper_bound(p.size)  # conservative, not dead
        assert 0.4 < (p < 0.5).mean() < 0.6
        sig = label_significance(t.p_value, iou_labels(counts)).significant
        report(f"random pixels, label significant ({variance})", U, float(sig.mean()))
        assert sig.mean() <= upper_bound(U)
    assert 0 < (~t.tested).sum() < t.tested.size  # rare units leave pairs untested


def test_shuffled_real_shaped_maps_are_calibrated(world: dict) -> None:
    counts = tally_counts(world["shuffled"], world["lab"])
    t = localisation(counts)
    p = t.p_value[t.tested]
    report("shuffled detectors, raw p < 0.05", p.size, float((p < ALPHA).mean()))
    assert (p < ALPHA).mean() <= upper_bound(p.size)
    for method in ("bh", "holm"):
        sig = label_significance(t.p_value, iou_labels(counts), method=method).significant
        report(f"shuffled detectors, label significant ({method})", U, float(sig.mean()))
        assert sig.mean() <= upper_bound(U)
    anywhere = (adjust_p_values(t.p_value) <= ALPHA).any(axis=1)
    report("shuffled detectors, any concept significant", U, float(anywhere.mean()))
    assert anywhere.mean() <= upper_bound(U)


def test_shuffled_clipped_blobs_keep_the_label_error_rate(world: dict) -> None:
    # edge-clipped blobs cover the centre more often than the border, so unrelated masks
    # overlap a little more than uniformly placed pixels would (not modelled, see the
    # module docstring): the raw rate may sit slightly above α; the label's stays below
    counts = tally_counts(world["clipped"], world["clipped_lab"])
    t = localisation(counts)
    p = t.p_value[t.tested]
    report("shuffled clipped blobs, raw p < 0.05", p.size, float((p < ALPHA).mean()))
    assert (p < ALPHA).mean() <= 2 * ALPHA
    sig = label_significance(t.p_value, iou_labels(counts)).significant
    report("shuffled clipped blobs, label significant", U, float(sig.mean()))
    assert sig.mean() <= upper_bound(U)


def test_hypergeometric_variance_alone_is_anticonservative_for_blobs(world: dict) -> None:
    # why the empirical variance is there: unrelated blobs overlap all or nothing
    t = localisation(tally_counts(world["shuffled"], world["lab"]), variance="hypergeometric")
    p = t.p_value[t.tested]
    report("shuffled detectors, hypergeometric variance only", p.size, float((p < ALPHA).mean()))
    assert (p < ALPHA).mean() > 0.2
    assert np.nanstd(t.z) > 2


def test_planted_detectors_are_significant_for_their_label(world: dict) -> None:
    counts = tally_counts(world["planted"], world["lab"])
    sig = label_significance(localisation(counts).p_value, iou_labels(counts))
    assert sig.significant.all()
    assert sig.p_value.max() < 1e-4
    assert np.median(sig.p_value) < 1e-10


# --- whole-image concepts: Mann-Whitney ----------------------------------------------


def brute_auc(x: np.ndarray, pos: np.ndarray) -> float:
    d = x[pos][:, None] - x[~pos][None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def test_auc_equals_pairwise_counting_with_ties() -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(0, 5, (6, 30)).astype(np.float64)
    pres = rng.random((30, 4)) < 0.4
    t = mann_whitney(torch.as_tensor(x), pres, min_images=1)
    for u, c in itertools.product(range(6), range(4)):
        assert t.auc[u, c] == pytest.approx(brute_auc(x[u], pres[:, c]), abs=1e-12)


def test_tie_corrected_variance_equals_permutation_variance() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (1, 40)).astype(np.float64)
    pres = np.zeros((40, 1), bool)
    pres[:12] = True
    perms = np.stack([rng.permutation(pres[:, 0]) for _ in range(20000)], axis=1)
    t = mann_whitney(x, perms)
    _, counts = np.unique(x, return_counts=True)
    ties = (counts**3 - counts).sum()
    assert tie_correction(x)[0] == ties
    var = 12 * 28 / 12 * (41 - ties / (40 * 39))
    assert var == pytest.approx(t.u_statistic.var(), rel=0.03)
    np.testing.assert_allclose(t.z * math.sqrt(var), t.u_statistic - 12 * 28 / 2, atol=1e-9)


def test_image_level_test_is_calibrated_and_finds_a_firing_unit() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(U, N))
    x[: U // 2] = np.round(x[: U // 2], 1)  # half the units with many ties
    pres = rng.random((N, 10)) < rng.uniform(0.03, 0.5, 10)
    t = mann_whitney(x, pres)
    p = t.p_value[t.tested]
    report("image-level null, raw p < 0.05", p.size, float((p < ALPHA).mean()))
    assert 0.02 < (p < ALPHA).mean() <= upper_bound(p.size)
    sig = label_significance(t.p_value, np.nanargmax(t.auc, axis=1)).significant
    report("image-level null, label (best AUC) significant", U, float(sig.mean()))
    assert sig.mean() <= upper_bound(U)
    x[0] += 1.0 * pres[:, 3]
    fired = mann_whitney(x, pres)
    assert fired.p_value[0, 3] < 1e-6 and fired.auc[0, 3] > 0.7
    few = mann_whitney(x, np.eye(N, 2, dtype=bool))
    assert not few.tested.any() and np.isnan(few.p_value).all()


# --- multiple testing and the label columns ------------------------------------------


def reference_adjust(row: np.ndarray, method: str) -> np.ndarray:
    out = np.full(row.shape, np.nan)
    idx = [i for i in range(row.size) if not np.isnan(row[i])]
    m = len(idx)
    for i in idx:
        rank = sorted(idx, key=lambda j: (row[j], j)).index(i) + 1
        ordered = sorted(row[j] for j in idx)
        if method == "bh":
            out[i] = min(min(1.0, m * ordered[k - 1] / k) for k in range(rank, m + 1))
        else:
            out[i] = max(min(1.0, (m - k + 1) * ordered[k - 1]) for k in range(1, rank + 1))
    return out


@pytest.mark.parametrize("method", ["bh", "holm"])
def test_adjusted_p_values_equal_a_reference(method: str) -> None:
    rng = np.random.default_rng(7)
    p = rng.random((30, 12)) ** 3
    p[rng.random(p.shape) < 0.2] = np.nan
    p[0] = np.nan
    p[1, :4] = 0.01  # ties
    adj = adjust_p_values(p, method)  # type: ignore[arg-type]
    for row, got in zip(p, adj, strict=True):
        np.testing.assert_allclose(got, reference_adjust(row, method), rtol=1e-12)
        ok = ~np.isnan(row)
        order = np.argsort(row[ok])
        assert (np.diff(got[ok][order]) >= -1e-15).all() and (got[ok] <= 1).all()
        assert (got[ok] >= row[ok] - 1e-15).all()


def test_label_significance_columns() -> None:
    p = np.array([[0.001, 0.5, np.nan], [0.2, 0.01, 0.04], [np.nan, np.nan, np.nan]])
    s = label_significance(p, np.array([0, 1, -1]))
    np.testing.assert_allclose(s.p_value, [0.002, 0.03, 1.0])
    np.testing.assert_array_equal(s.significant, [True, True, False])
    np.testing.assert_array_equal(s.tested, [True, True, False])
    s = label_significance(p, np.array([2, 2, 0]), method="holm")
    np.testing.assert_allclose(s.p_value, [1.0, 0.08, 1.0])
    np.testing.assert_array_equal(s.tested, [False, True, False])
    assert not s.significant.any()
    mixed = combine_tests(np.zeros((2, 3)), np.ones((2, 3)), np.array([False, True, False]))
    np.testing.assert_array_equal(mixed, [[0, 1, 0], [0, 1, 0]])
