"""Compositional explanations (broden.dissect.explain) against brute force over dense masks:
reported IoUs, planted formulas, and a straightforward beam search written here from the
definitions (every candidate evaluated over the whole dataset), formula for formula."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from broden.dissect.explain import (
    ConceptMasks,
    FormulaSearch,
    UnitMask,
    evaluate_formula,
    explain_units,
    formula_from_json,
    formula_key,
    formula_to_json,
    formula_to_text,
)

N_IMAGES, L, C = 40, 16, 30
WHOLE = range(25, 30)  # whole-image concepts


def make_concepts(seed: int = 0) -> np.ndarray:
    """(C, N, L, L) boolean: concepts of varying density (pixel noise, rectangles), some
    whole-image ones, one never present."""
    rng = np.random.default_rng(seed)
    d = np.zeros((C, N_IMAGES, L, L), bool)
    density = np.geomspace(0.005, 0.4, 12)
    for c in range(12):  # scattered pixels
        d[c] = rng.random((N_IMAGES, L, L)) < density[c]
    for c in range(12, 24):  # rectangles in some images
        for i in np.flatnonzero(rng.random(N_IMAGES) < 0.1 + 0.03 * (c - 12)):
            r0, c0 = rng.integers(0, L - 2, 2)
            h, w = rng.integers(2, L // 2, 2)
            d[c, i, r0 : r0 + h, c0 : c0 + w] = True
    # concept 24 never occurs
    for c in WHOLE:
        d[c] = (rng.random(N_IMAGES) < 0.1 + 0.1 * (c - 25))[:, None, None]
    return d


def make_units(d: np.ndarray, n: int = 12, seed: int = 1) -> list[np.ndarray]:
    """Unit masks: noisy combinations of concepts and sparse random blobs."""
    rng = np.random.default_rng(seed)
    units = []
    for k in range(n):
        a, b, c = rng.choice(C, 3, replace=False)
        base = [d[a] | d[b], d[a] & ~d[c], (d[a] | d[b]) & d[c], d[a]][k % 4]
        noise = rng.random(base.shape) < 0.01
        units.append(base ^ noise)
    units.append(rng.random(d.shape[1:]) < 0.005)  # sparse noise
    units.append(np.zeros(d.shape[1:], bool))  # a dead unit
    return units


@pytest.fixture(scope="module")
def dense() -> np.ndarray:
    return make_concepts()


@pytest.fixture(scope="module")
def masks(dense: np.ndarray) -> ConceptMasks:
    return ConceptMasks.from_dense(dense)


@pytest.fixture(scope="module")
def units(dense: np.ndarray) -> list[np.ndarray]:
    return make_units(dense)


# --- the straightforward reference: dense masks, every candidate over the whole dataset


def ref_iou(f: np.ndarray, u: np.ndarray) -> float:
    union = int((f | u).sum())
    return int((f & u).sum()) / union if union else 0.0


def ref_mask(key: tuple[int, ...], d: np.ndarray) -> np.ndarray:
    f = d[key[0]].copy()
    for k in range(1, len(key), 2):
        c = d[key[k + 1]]
        f = [f | c, f & c, f & ~c][key[k]]
    return f


def ref_truth_table(key: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    leaves = sorted(key[0::2])
    rows = []
    for values in itertools.product([False, True], repeat=len(leaves)):
        v = dict(zip(leaves, values, strict=True))
        t = v[key[0]]
        for k in range(1, len(key), 2):
            x = v[key[k + 1]]
            t = [t or x, t and x, t and not x][key[k]]
        rows.append(t)
    return tuple(leaves), tuple(rows)


def ref_search(
    d: np.ndarray, u: np.ndarray, length: int, beam: int, allowed: list[int] | None = None
) -> tuple[tuple[int, ...], float]:
    """Beam search straight from the definitions: (key, IoU) of the best formula."""
    allowed = list(range(len(d))) if allowed is None else sorted(allowed)

    def order(item: tuple[tuple[int, ...], float]) -> tuple[float, int, tuple[int, ...]]:
        return (-item[1], len(item[0]), item[0])

    def best_distinct(pool: dict[tuple[int, ...], float]) -> list[tuple[tuple[int, ...], float]]:
        out, seen = [], set()
        for item in sorted(pool.items(), key=order):
            t = ref_truth_table(item[0])
            if t not in seen:
                seen.add(t)
                out.append(item)
            if len(out) == beam:
                break
        return out

    current = best_distinct({(c,): ref_iou(d[c], u) for c in allowed})
    for _ in range(length - 1):
        pool = dict(current)
        for key, _iou in current:
            f = ref_mask(key, d)
            for op in range(3):
                for c in allowed:
                    if c in key[0::2]:
                        continue
                    g = [f | d[c], f & d[c], f & ~d[c]][op]
                    pool[(*key, op, c)] = ref_iou(g, u)
        current = best_distinct(pool)
    return current[0]


# --- tests


def test_concept_masks_rebuild_the_dense_masks(dense: np.ndarray, masks: ConceptMasks) -> None:
    assert masks.n_images == N_IMAGES and masks.n_concepts == C
    for c in range(C):
        assert np.array_equal(masks.dense(c), dense[c])
    assert np.array_equal(masks.concept_area, dense.reshape(C, -1).sum(axis=1))
    assert masks.atom_area.sum() == N_IMAGES * L * L  # every pixel on exactly one atom


def test_sparse_entries_and_whole_image_labels_give_the_same_masks(dense: np.ndarray) -> None:
    images = []
    for i in range(N_IMAGES):
        entries: list[tuple[int, np.ndarray | None]] = []
        for c in range(C):
            if not dense[c, i].any():
                continue
            if c in WHOLE:
                entries.append((c, None))
            elif c % 2:
                entries.append((c, np.flatnonzero(dense[c, i])))
            else:  # boolean masks, and a concept listed twice (the union counts)
                half = dense[c, i].copy()
                half[: L // 2] = False
                entries += [(c, half), (c, np.flatnonzero(dense[c, i, : L // 2]))]
        images.append(entries)
    sparse = ConceptMasks.from_images(images, [f"c{c}" for c in range(C)], L)
    for c in range(C):
        assert np.array_equal(sparse.dense(c), dense[c])


def test_images_with_more_than_64_concepts() -> None:
    rng = np.random.default_rng(5)
    d = rng.random((150, 3, 8, 8)) < 0.3
    m = ConceptMasks.from_dense(d)
    for c in range(150):
        assert np.array_equal(m.dense(c), d[c])


@pytest.mark.parametrize("length", [1, 2, 3])
def test_reported_iou_is_the_brute_force_iou(
    dense: np.ndarray, masks: ConceptMasks, units: list[np.ndarray], length: int
) -> None:
    search = FormulaSearch(masks, length=length, beam=5)
    for k, u in enumerate(units):
        e = search.explain(UnitMask.from_dense(k, u))
        assert e.unit == k and 1 <= e.length <= length
        assert abs(evaluate_formula(e.ids, dense, u) - e.iou) <= 1e-12
        assert abs(evaluate_formula(e.ids, masks, UnitMask.from_dense(k, u)) - e.iou) <= 1e-12
        assert formula_from_json(e.formula, masks.names) == e.ids


def test_length_one_is_the_best_single_concept(
    dense: np.ndarray, masks: ConceptMasks, units: list[np.ndarray]
) -> None:
    for k, u in enumerate(units):
        e = FormulaSearch(masks, length=1, beam=5).explain(UnitMask.from_dense(k, u))
        ious = [ref_iou(dense[c], u) for c in range(C)]
        assert e.iou == max(ious) and e.ids == int(np.argmax(ious))  # ties: lowest id


def test_best_iou_never_decreases_with_length(masks: ConceptMasks, units: list[np.ndarray]) -> None:
    for k, u in enumerate(units):
        ious = [
            FormulaSearch(masks, n, 5).explain(UnitMask.from_dense(k, u)).iou for n in (1, 2, 3)
        ]
        assert ious == sorted(ious)


@pytest.mark.parametrize(
    ("op", "expected"), [("or", "(c3 OR c14)"), ("and_not", "(c14 AND NOT c10)")]
)
def test_planted_formula_is_found_with_iou_one(
    dense: np.ndarray, masks: ConceptMasks, op: str, expected: str
) -> None:
    u = dense[3] | dense[14] if op == "or" else dense[14] & ~dense[10]
    e = FormulaSearch(masks, length=3, beam=5).explain(UnitMask.from_dense(0, u))
    assert e.iou == 1.0 and e.length == 2 and e.text == expected


def test_an_exact_concept_stays_a_single_concept(dense: np.ndarray, masks: ConceptMasks) -> None:
    # c OR c, c AND c are not produced; any longer formula with IoU 1 loses the tie
    e = FormulaSearch(masks, length=3, beam=5).explain(UnitMask.from_dense(0, dense[7]))
    assert e.ids == 7 and e.iou == 1.0 and e.length == 1


@pytest.mark.parametrize(("length", "beam"), [(2, 1), (3, 3), (3, 5), (4, 2)])
def test_search_equals_the_straightforward_beam_search(
    dense: np.ndarray, masks: ConceptMasks, units: list[np.ndarray], length: int, beam: int
) -> None:
    search = FormulaSearch(masks, length=length, beam=beam)
    for k, u in enumerate(units):
        e = search.explain(UnitMask.from_dense(k, u))
        key, iou = ref_search(dense, u, length, beam)
        assert (formula_key(e.ids), e.iou) == (key, iou), f"unit {k}"


def test_extensions_past_the_prefilter_are_ordered_the_same(
    dense: np.ndarray, masks: ConceptMasks, units: list[np.ndarray]
) -> None:
    search = FormulaSearch(masks, length=3, beam=4)
    search.prefilter = 0  # one extension first, then all the others
    for k, u in enumerate(units):
        e = search.explain(UnitMask.from_dense(k, u))
        assert (formula_key(e.ids), e.iou) == ref_search(dense, u, 3, 4), f"unit {k}"


def test_concept_subset_is_honoured(
    dense: np.ndarray, masks: ConceptMasks, units: list[np.ndarray]
) -> None:
    subset = [1, 4, 5, 9, 13, 14, 17, 20, 22, 26, 28]
    results = explain_units(
        masks, [UnitMask.from_dense(k, u) for k, u in enumerate(units)], 3, 4, subset
    )
    for k, (e, u) in enumerate(zip(results, units, strict=True)):
        assert set(formula_key(e.ids)[0::2]) <= set(subset)
        assert (formula_key(e.ids), e.iou) == ref_search(dense, u, 3, 4, subset), f"unit {k}"


def test_results_are_deterministic(
    dense: np.ndarray, masks: ConceptMasks, units: list[np.ndarray]
) -> None:
    um = [UnitMask.from_dense(k, u) for k, u in enumerate(units)]
    shared = FormulaSearch(masks, 3, 5)
    first = shared.explain_all(um)
    assert shared.cache_hits > 0  # the second and later units reuse formula counts
    assert shared.explain_all(um) == first  # all counts cached now
    assert explain_units(masks, um[::-1], 3, 5)[::-1] == first  # fresh cache, other order
    # the order of the concept subset and of the images do not matter
    order = np.random.default_rng(3).permutation(C)
    assert explain_units(masks, um, 3, 5, order) == first
    perm = np.random.default_rng(4).permutation(N_IMAGES)
    shuffled = ConceptMasks.from_dense(dense[:, perm])
    assert (
        explain_units(shuffled, [UnitMask.from_dense(k, u[perm]) for k, u in enumerate(units)])
        == first
    )


def test_formula_json_and_text() -> None:
    names = ["water", "river", "blue-c"]
    f = ("and_not", ("or", 0, 1), 2)
    j = formula_to_json(f, names)
    assert j == ["and_not", ["or", "water", "river"], "blue-c"]
    assert formula_to_text(j) == formula_to_text(f, names) == "((water OR river) AND NOT blue-c)"
    assert formula_to_text(1, names) == "river" and formula_to_json(1, names) == "river"
    assert formula_from_json(j, names) == f
    assert formula_key(f) == (0, 0, 1, 2, 2)
    with pytest.raises(ValueError, match="unknown concept 'lake'"):
        formula_from_json(["or", "water", "lake"], names)


def test_bad_inputs_fail_clearly(masks: ConceptMasks) -> None:
    with pytest.raises(ValueError, match="outside 0..29"):
        FormulaSearch(masks, concepts=[3, 30])
    with pytest.raises(ValueError, match="empty concept subset"):
        FormulaSearch(masks, concepts=[])
    with pytest.raises(ValueError, match="outside the 40 images"):
        masks.unit_atoms(UnitMask(0, np.array([40]), np.array([0])))
    with pytest.raises(ValueError, match="flat indices in 0..255"):
        ConceptMasks.from_images([[(0, np.array([256]))]], ["a"], L)
