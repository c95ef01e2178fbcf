"""Thresholds: the streaming top-k is exact, and both quantile conventions match their
definitions (numpy.quantile; NetDissect-Lite's plotting-position readout written out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from broden.dissect.errors import DissectError
from broden.dissect.scoring import iou_matrix
from broden.dissect.thresholds import (
    StreamingTopK,
    ndl_level,
    threshold_from_top,
    validate_quantile,
    values_needed,
)
from tests.dissect_helpers import ref_threshold


def stream_thresholds(
    values: np.ndarray, quantile: float, method: str, splits: list[int]
) -> np.ndarray:
    """Thresholds of (units × n) values fed in batches of the given sizes."""
    U, n = values.shape
    top = StreamingTopK(U, values_needed(n, quantile, method), dtype=torch.float64)
    start = 0
    for size in splits:
        top.add(torch.from_numpy(values[:, start : start + size]))
        start += size
    assert start == n
    return threshold_from_top(top.result(), top.seen, quantile, method)


def test_ndl_level_is_nd_lites_readout_position_994():
    assert ndl_level(0.005) == pytest.approx(994 / 999, abs=1e-15)


def test_streaming_top_k_keeps_exactly_the_largest_values():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 3000))
    values[2] = np.round(values[2], 1)  # many ties
    top = StreamingTopK(5, 40, dtype=torch.float64)
    for part in np.array_split(values, 17, axis=1):
        top.add(torch.from_numpy(part))
    expect = np.sort(values, axis=1)[:, -40:]
    np.testing.assert_array_equal(top.result(), expect)


@pytest.mark.parametrize("method", ["exact", "ndl"])
@pytest.mark.parametrize("quantile", [0.005, 0.01, 0.3])
@pytest.mark.parametrize("n", [1, 7, 199, 2500])
def test_streamed_thresholds_match_the_definition(method, quantile, n):
    rng = np.random.default_rng(n)
    values = rng.gamma(2.0, size=(4, n))
    values[1] = np.maximum(values[1] - 2.5, 0)  # ReLU-like: many equal zeros
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(5, n - 1), replace=False)) if n > 1 else []
    splits = np.diff(np.concatenate([[0], cuts, [n]])).astype(int).tolist()
    got = stream_thresholds(values, quantile, method, splits)
    want = [ref_threshold(v, quantile, method) for v in values]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    if method == "exact":  # exactly numpy's own result
        np.testing.assert_array_equal(got, np.quantile(values, 1 - quantile, axis=1))


def test_thresholds_do_not_depend_on_batching():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(3, 1000)).astype(np.float32).astype(np.float64)
    a = stream_thresholds(values, 0.005, "exact", [1000])
    b = stream_thresholds(values, 0.005, "exact", [1] * 1000)
    np.testing.assert_array_equal(a, b)


def test_ndl_differs_from_exact_by_the_plotting_positions():
    values = np.arange(1000, dtype=np.float64)[None]  # 0..999
    exact = stream_thresholds(values, 0.005, "exact", [1000])[0]
    ndl = stream_thresholds(values, 0.005, "ndl", [1000])[0]
    assert exact == pytest.approx(999 * 0.995)  # (n - 1)(1 - q) = 994.005
    # level p = 994/999 sits between (k - 1/2)/n of k = 994 and 995: value 993 + frac
    p = 994 / 999
    assert ndl == pytest.approx(993 + (p - 993.5 / 1000) * 1000)


def test_bad_quantiles_are_refused():
    with pytest.raises(DissectError, match="quantile"):
        validate_quantile(0.0, "exact")
    with pytest.raises(DissectError, match="unknown --quantile-method"):
        validate_quantile(0.005, "kll")


def test_iou_formula_reproduces_the_published_road_unit():
    # AlexNet-Places365 conv5 unit 107 "road": object-truth 13,092,677, activation
    # 3,044,167, intersect 2,171,174, IoU 0.155 (BRODEN_AND_DISSECTION.md §7b)
    counts = {
        "intersection": np.array([[2_171_174]]),
        "concept_area": np.array([13_092_677]),
        "unit_area_original": np.array([[3_044_167]]),
    }
    iou = iou_matrix(counts, np.array([0]), "original")
    assert iou[0, 0] == pytest.approx(2_171_174 / (3_044_167 + 13_092_677 - 2_171_174))
    assert round(iou[0, 0], 4) == 0.1555
