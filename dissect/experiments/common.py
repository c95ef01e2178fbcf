"""What the experiments share: their warning, and how their figures are saved."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class ExperimentWarning(UserWarning):
    """Results that can be compared or drawn, but with a caveat (different stores, ...)."""


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """``stem``.png and ``stem``.svg, without time stamps (same input, same bytes)."""
    import matplotlib

    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with matplotlib.rc_context({"svg.hashsalt": "broden", "svg.fonttype": "none"}):
        fig.savefig(paths[0], dpi=120, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    return paths
