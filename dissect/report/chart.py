"""The report's bar chart of detectors per concept, and how concepts are named on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from broden.dissect.report.read import LayerResults

#: the original bar graph's category order (NetDissect bargraph.py)
BAR_ORDER: tuple[str, ...] = ("object", "scene", "part", "material", "texture", "color")
_SUFFIXES = {"scene": "-s", "color": "-c"}


def display_name(name: str, category: str) -> str:
    """``street-s`` → ``street`` for a scene, ``red-c`` → ``red`` for a color (display
    only: the original report's convention); other names unchanged."""
    suffix = _SUFFIXES.get(category)
    if suffix and name.endswith(suffix) and len(name) > len(suffix):
        return name[: -len(suffix)]
    return name


def has_random_weights(spec: str | None, weights: str | None) -> bool:
    """True when a model spec is known to give random weights: the built-in zoo
    (``dissect.zoo:*``), ``torchvision:NAME``, ``timm:NAME`` or ``open_clip:ARCH``
    without ``--weights`` (a ``module:factory`` may load its own; an ``hf:`` model loads
    what was saved)."""
    if not spec or weights:
        return False
    if spec.startswith(("dissect.zoo:", "broden.dissect.zoo:")):
        return True
    parts = spec.split(":")
    return parts[0] in ("torchvision", "timm", "open_clip") and len(parts) == 2


def detector_counts(layer: LayerResults, order: Sequence[str]) -> list[tuple[str, str, int]]:
    """(label, category, detector units) per distinct label of a detector unit: categories
    in ``order`` (others after, in first-seen order), within a category by descending count
    then name."""
    t = layer.iou_threshold
    counts: dict[tuple[str, str], int] = {}
    for r in layer.units:
        if r.label and r.iou > t:
            counts[(r.label, r.category)] = counts.get((r.label, r.category), 0) + 1
    cats = list(order) + [c for _, c in counts if c not in order]
    return sorted(
        ((lab, cat, n) for (lab, cat), n in counts.items()),
        key=lambda x: (cats.index(x[1]), -x[2], x[0]),
    )


def bar_chart(
    layer: LayerResults, path: Path, colors: Mapping[str, str], order: Sequence[str] = BAR_ORDER
) -> bool:
    """Write the detectors-per-concept bar chart of ``layer`` as SVG (text drawn as
    paths, so no concept name is markup in it); False when the layer has no detector."""
    bars = detector_counts(layer, order)
    if not bars:
        return False
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    n = len(bars)
    longest = max(len(display_name(b[0], b[1])) for b in bars)
    fig = Figure(figsize=(max(4.0, 1.2 + 0.24 * n), 2.6 + 0.07 * min(longest, 30)))
    ax = fig.subplots()
    x = np.arange(n)
    ax.bar(x, [b[2] for b in bars], color=[colors[b[1]] for b in bars], width=0.75)
    ax.set_xticks(x, [display_name(b[0], b[1]) for b in bars], rotation=90, fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("detector units")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{layer.name}: detectors per concept", fontsize=10)
    seen = list(dict.fromkeys(b[1] for b in bars))
    ax.legend(
        handles=[Patch(color=colors[c], label=c) for c in seen],
        fontsize=8,
        frameon=False,
        loc="upper right",
    )
    fig.tight_layout()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "broden-report"}):
        fig.savefig(path, format="svg", metadata={"Date": None})
    return True
