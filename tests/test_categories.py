"""Broden's categories in one module: hierarchy order and the one colour table."""

from __future__ import annotations

import ast

from broden.adapters.categories import (
    CATEGORY_COLORS,
    CATEGORY_ORDER,
    EXTRA_COLORS,
    category_colors,
    ordered_categories,
)
from tests.conftest import REPO


def test_hierarchy_order_puts_a_users_categories_last_by_name() -> None:
    got = ordered_categories(["scene", "zebra", "object", "color", "apple", "scene"])
    assert got == ["color", "object", "scene", "apple", "zebra"]
    assert CATEGORY_ORDER == ("color", "texture", "material", "part", "object", "scene")


def test_every_category_has_one_colour_everywhere() -> None:
    colors = category_colors(["scene", "mine", "object", "theirs", "more", "x", "y"])
    assert colors["scene"] == CATEGORY_COLORS["scene"] == "#2ca02c"
    assert [colors[c] for c in ("mine", "theirs", "more", "x")] == list(EXTRA_COLORS)
    assert colors["y"] == EXTRA_COLORS[0]  # cycles


def test_no_other_module_defines_category_constants() -> None:
    """CATEGORY_ORDER and the colour table are defined once (adapters/categories.py)."""
    owners = []
    for package in ("adapters", "broden", "dissect"):
        for f in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                targets = []
                if isinstance(node, ast.Assign):
                    targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    targets = [node.target.id]
                for name in targets:
                    if name in ("CATEGORY_ORDER", "CATEGORY_COLORS") or name.endswith("_COLORS"):
                        owners.append((f.relative_to(REPO).as_posix(), name))
    here = "adapters/categories.py"
    assert sorted(owners) == sorted(
        [(here, "CATEGORY_ORDER"), (here, "CATEGORY_COLORS"), (here, "EXTRA_COLORS")]
    )
