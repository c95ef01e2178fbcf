"""Broden's categories: their hierarchy order, their kinds, and the one colour table every
chart and page draws them in.

The hierarchy runs from the lowest level up: color, texture, material, part, object,
scene (Bau et al. 2017). A category is per-``pixel`` (a label per pixel: color,
material, part, object) or per-``image`` (whole-image labels: texture, scene); a user's
own categories may be either, and sort after these, alphabetically.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

#: The Broden hierarchy, lowest level first.
CATEGORY_ORDER: tuple[str, ...] = ("color", "texture", "material", "part", "object", "scene")

Kind = Literal["pixel", "image"]
#: the kinds a category can have
KINDS: tuple[Kind, ...] = ("pixel", "image")

#: The colour of each Broden category in every figure and page (report bars and chips,
#: comparison and rotation plots).
CATEGORY_COLORS: dict[str, str] = {
    "object": "#1f77b4",
    "scene": "#2ca02c",
    "part": "#ff7f0e",
    "material": "#8c564b",
    "texture": "#9467bd",
    "color": "#d62728",
}
#: colours given, in turn, to categories outside the Broden hierarchy
EXTRA_COLORS: tuple[str, ...] = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f")


def category_sort_key(name: str) -> tuple[int, str]:
    """Sort key putting categories in hierarchy order, unknown ones last by name."""
    try:
        return (CATEGORY_ORDER.index(name), name)
    except ValueError:
        return (len(CATEGORY_ORDER), name)


def ordered_categories(names: Iterable[str]) -> list[str]:
    """The distinct ``names`` in hierarchy order (unknown ones last, by name)."""
    return sorted(dict.fromkeys(names), key=category_sort_key)


def category_colors(categories: Iterable[str]) -> dict[str, str]:
    """A colour per category: :data:`CATEGORY_COLORS` for Broden's, :data:`EXTRA_COLORS` in
    turn (cycling) for the others, in the order given."""
    out: dict[str, str] = {}
    extra = 0
    for c in dict.fromkeys(categories):
        if c in CATEGORY_COLORS:
            out[c] = CATEGORY_COLORS[c]
        else:
            out[c] = EXTRA_COLORS[extra % len(EXTRA_COLORS)]
            extra += 1
    return out
