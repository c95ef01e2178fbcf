"""One rank of the distributed tests' ``torchrun`` launch: runs the dissections listed in
a JSON file (argv[1]) with ``distributed=True``, in order.

Each job is ``{"fn": "dissect" | "score_activations", "args": [...], "kwargs": {...}}``
(``kwargs["out"]`` is required; ``out`` and ``thresholds`` are the call's, the other
keywords its :class:`DissectSettings`). Ranks other than 0 get ``out`` with ``.rank<r>``
appended, so that a file written by them would show there. Every rank saves what it
got back (IoU, thresholds, top images per layer) to ``<argv[2]>/rank<r>-<job>.npz``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from broden.dissect import dissect, score_activations
from broden.dissect.distributed import shutdown
from broden.dissect.settings import DissectSettings

CALL = ("out", "thresholds")


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    got = Path(sys.argv[2])
    rank = int(os.environ["RANK"])  # set by torchrun
    for n, job in enumerate(jobs):
        kwargs = dict(job["kwargs"], distributed=True)
        if rank > 0:
            kwargs["out"] = f"{kwargs['out']}.rank{rank}"
        call = {k: v for k, v in kwargs.items() if k in CALL}
        settings = DissectSettings(**{k: v for k, v in kwargs.items() if k not in CALL})
        if job["fn"] == "dissect":
            res = dissect(*job["args"], settings, **call)
        else:
            r = score_activations(*job["args"], None, settings, **call)
            res = {r.layer: r}
        arrays = {}
        for la, r in res.items():
            arrays[f"{la}/iou"] = r.iou
            arrays[f"{la}/thresholds"] = r.thresholds
            arrays[f"{la}/top"] = r.top_indices
        np.savez(got / f"rank{rank}-{n}.npz", **arrays)
    shutdown()


if __name__ == "__main__":
    main()
