"""Broden's vocabulary rules: synonyms, claiming, merging, thresholds, numbering."""

from __future__ import annotations

import pytest

from broden.vocabulary import Key, KeyStats, Synonyms, key_names, unify


@pytest.fixture(scope="module")
def syn() -> Synonyms:
    return Synonyms.broden()


def test_synonyms_leave_unknown_names_alone(syn: Synonyms) -> None:
    assert syn(["tree"]) == ["tree"]


def test_preferred_names_come_first(syn: Synonyms) -> None:
    # "arm" never aliases "left arm", so the positional name disappears entirely
    assert syn(["left arm"]) == ["arm"]
    assert syn(["person torso"]) == ["torso"]
    assert syn(["aeroplane"]) == ["airplane", "aeroplane"]
    # Broden's table spells the key "windopane": ADE's "windowpane, window" is left as is
    # (and still merges with "window" through its second name)
    assert syn(["windowpane", "window"]) == ["windowpane", "window"]


def test_blacklisted_synonyms_are_dropped(syn: Synonyms) -> None:
    # ADE's car entry carries "machine", which must not alias car to machines
    assert syn(["car", "auto", "automobile", "machine", "motorcar"]) == [
        "car", "auto", "automobile", "motorcar",
    ]  # fmt: skip
    assert syn(["paper", "tissue"]) == ["paper"]  # OpenSurfaces "paper/tissue"
    # the blacklist applies to names brought in by the preferred table too: "arm" never
    # keeps "left arm", so the bare part name is all that is left
    assert syn(["arm", "left arm"]) == ["arm"]


def test_key_names_are_lowercased_suffixed_and_filtered(syn: Synonyms) -> None:
    sfx = {"scene": "-s", "color": "-c"}
    assert key_names(["Street", "-", ""], "scene", sfx, syn) == ["street-s"]
    assert key_names(["red"], "color", sfx, syn) == ["red-c"]
    assert key_names(["airport-airport"], "scene", sfx, syn) == ["airport-s", "airport-airport-s"]
    assert key_names(["Leg"], "part", sfx, None) == ["leg"]


def run(
    stats: dict[Key, tuple[int, float]], names: dict[Key, list[str]], mf: int = 1, mc: float = 0
):
    return unify({k: KeyStats(f, c) for k, (f, c) in stats.items()}, lambda k: names[k], mf, mc)


def test_same_name_across_sources_and_categories_is_one_concept() -> None:
    a, b, c = ("ade20k", "part", 5), ("pascal", "part", 9), ("ade20k", "object", 7)
    u = run({a: (30, 3.0), b: (20, 1.0), c: (5, 0.5)}, {a: ["leg"], b: ["leg"], c: ["leg"]})
    assert len(u.concepts) == 1
    leg = u.concepts[0]
    assert (leg.name, leg.frequency, leg.coverage) == ("leg", 55, 4.5)
    assert [(s.name, s.frequency) for s in leg.categories] == [("part", 50), ("object", 5)]
    assert leg.category == "part"  # largest coverage
    assert leg.sources == ["ade20k", "pascal"]
    assert u.assignment == {a: 1, b: 1, c: 1}


def test_names_are_claimed_by_descending_frequency() -> None:
    # "cloth" is claimed by the more frequent fabric key; the rarer key keeps its own name
    fabric, cloth = ("os", "material", 1), ("ade", "object", 2)
    u = run({fabric: (50, 5.0), cloth: (10, 1.0)},
            {fabric: ["fabric", "cloth"], cloth: ["cloth", "rag"]})  # fmt: skip
    assert [c.name for c in u.concepts] == ["fabric", "rag"]
    assert u.concepts[0].synonyms == ["cloth"]


def test_merge_goes_to_the_owner_with_the_closest_mean_coverage() -> None:
    big, small, x = ("s", "object", 1), ("s", "object", 2), ("s", "object", 3)
    stats = {big: (100, 50.0), small: (80, 4.0), x: (10, 0.6)}  # means 0.5, 0.05, 0.06
    names = {big: ["pot"], small: ["jar"], x: ["pot", "jar"]}
    u = run(stats, names)
    assert u.key_names[x] == "jar"
    assert u.concept(u.assignment[x]).frequency == 90


def test_labels_under_the_thresholds_are_dropped_and_map_to_zero() -> None:
    keep, rare, thin = ("s", "object", 1), ("s", "object", 2), ("s", "object", 3)
    u = run(
        {keep: (12, 3.0), rare: (9, 5.0), thin: (40, 0.2)},
        {keep: ["keep"], rare: ["rare"], thin: ["thin"]},
        mf=10,
        mc=0.5,
    )
    assert [c.name for c in u.concepts] == ["keep"]
    assert u.assignment[rare] == 0 and u.assignment[thin] == 0
    assert {d.name for d in u.dropped} == {"rare", "thin"}


def test_numbering_follows_frequency_then_coverage() -> None:
    k = [("s", "object", i) for i in range(4)]
    u = run(
        {k[0]: (5, 1.0), k[1]: (9, 1.0), k[2]: (9, 2.0), k[3]: (7, 9.0)},
        {k[0]: ["a"], k[1]: ["b"], k[2]: ["c"], k[3]: ["d"]},
    )
    assert [(c.id, c.name) for c in u.concepts] == [(1, "c"), (2, "b"), (3, "d"), (4, "a")]


def test_a_blacklisted_synonym_does_not_merge() -> None:
    syn = Synonyms.broden()
    car, machine = ("ade", "object", 1), ("ade", "object", 2)
    raw = {car: ["car", "machine"], machine: ["machine"]}
    u = unify(
        {car: KeyStats(50, 5.0), machine: KeyStats(10, 1.0)},
        lambda k: key_names(raw[k], "object", {}, syn),
        1,
        0,
    )
    assert [c.name for c in u.concepts] == ["car", "machine"]


def test_part_of_edges_map_to_concepts() -> None:
    leg_cat, leg_dog = ("pascal", "part", 1), ("pascal", "part", 2)
    cat, dog = ("pascal", "object", 8), ("pascal", "object", 12)
    stats = {leg_cat: (3, 0.1), leg_dog: (2, 0.1), cat: (3, 0.5), dog: (2, 0.6)}
    names = {leg_cat: ["leg"], leg_dog: ["leg"], cat: ["cat"], dog: ["dog"]}
    u = unify(
        {k: KeyStats(*v) for k, v in stats.items()},
        lambda k: names[k],
        1,
        0,
        part_of={(leg_cat, cat): 300, (leg_dog, dog): 500},
    )
    leg = next(c for c in u.concepts if c.name == "leg")
    by_name = {c.id: c.name for c in u.concepts}
    assert [(by_name[e.id], e.pixels) for e in leg.part_of] == [("dog", 500), ("cat", 300)]


def test_unify_into_keeps_ids_and_merges_new_labels_by_name() -> None:
    """`broden add`: ids, names and categories of the old table stay; a new label joins the
    concept that owns its name or synonym; the others are appended by frequency."""
    from broden.vocabulary import unify_into

    a, b, c = ("ade20k", "object", 1), ("ade20k", "object", 2), ("ade20k", "part", 3)
    old = run(
        {a: (30, 3.0), b: (20, 1.0), c: (10, 0.5)},
        {a: ["car", "auto"], b: ["sky"], c: ["wheel"]},
    ).concepts
    car, pillow, wheel, bed, rare, auto = (("coco", "object", i) for i in (3, 90, 4, 65, 7, 8))
    stats = {
        car: KeyStats(5, 0.5),  # same name: joins car
        auto: KeyStats(1, 0.1),  # a synonym of car: joins car
        wheel: KeyStats(4, 0.2),  # an object "wheel" joins the part concept by name
        pillow: KeyStats(6, 0.3),
        bed: KeyStats(9, 2.0),
        rare: KeyStats(1, 0.01),
    }
    names = {car: ["car"], auto: ["auto"], wheel: ["wheel"], pillow: ["pillow"], bed: ["bed"],
             rare: ["rare thing"]}  # fmt: skip
    u = unify_into(old, stats, lambda k: names[k], 2, 0.0)
    assert [(c.id, c.name, c.category) for c in u.concepts[:3]] == [
        (c.id, c.name, c.category) for c in old
    ]
    assert u.assignment[car] == u.assignment[auto] == old[0].id
    assert u.assignment[wheel] == 3 and u.concepts[2].category == "part"  # primary kept
    assert [s.name for s in u.concepts[2].categories] == ["part", "object"]
    # new names pass the thresholds on the new images and follow by frequency
    assert [(c.id, c.name) for c in u.concepts[3:]] == [(4, "bed"), (5, "pillow")]
    assert u.assignment[rare] == 0 and [d.name for d in u.dropped] == ["rare thing"]
    assert u.concepts[0].frequency == 30 + 5 + 1
    assert u.concepts[0].coverage == pytest.approx(3.6)
    assert u.concepts[0].sources == ["ade20k", "coco"]
    assert u.concepts[1] == old[1]  # sky got nothing: unchanged
