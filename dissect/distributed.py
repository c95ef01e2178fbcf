"""Dissection across processes with ``torch.distributed`` (``--distributed``, launched
with ``torchrun``).

Each rank dissects a disjoint part of the (selected) images made of whole shards
(:func:`split_shards`), and the ranks combine what a single process would have seen:

- thresholds: each unit's largest values, kept per rank by the same exact
  :class:`~broden.dissect.thresholds.StreamingTopK` with the ``k`` that the whole dataset
  needs, are gathered and the global top ``k`` taken (the top ``k`` of a union is within
  the union of the parts' top ``k``), with the counts of values summed; both quantile
  methods (``exact``, ``ndl``) depend only on these, so thresholds are identical to a
  single process's (each rank holds world × units × k float64 values for a moment:
  about 130 MB on each of 2 ranks for ResNet-18 layer4 on Broden);
- tallies (int64 counts) are summed (``all_reduce``);
- top images (per-image maxima, ties to the lower index) are gathered and ranked again.

Every rank ends with the same results; only rank 0 writes files. :class:`Ranks` is the
single-process case (every operation the identity), :class:`TorchRanks` the
distributed one; the pipeline calls them the same way.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, TypeVar

import numpy as np
import torch

from broden.dissect.data import resolve_device
from broden.dissect.errors import DissectError
from broden.store import BrodenStore

T = TypeVar("T")

#: torchrun's variables that ``init_process_group("env://")`` reads
ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCH = (
    "launch with torchrun, e.g. `torchrun --nproc-per-node 2 $(which broden) dissect STORE "
    "... --distributed` or `torchrun --nproc-per-node 2 -m broden dissect STORE ... "
    "--distributed`"
)


def split_shards(images: np.ndarray, shard_size: int, world: int) -> list[np.ndarray]:
    """``images`` (ascending store indices) in ``world`` consecutive parts of whole shards
    (of ``shard_size`` images), balanced by image count: a shard goes to the rank in
    whose share of the images its middle falls. A part may be empty (more ranks than
    shards)."""
    idx = np.asarray(images, np.int64)
    if not len(idx):
        return [idx] * world
    cuts = np.flatnonzero(np.diff(idx // shard_size)) + 1
    starts = np.concatenate([[0], cuts])
    sizes = np.diff(np.concatenate([starts, [len(idx)]]))
    owner = np.minimum((2 * starts + sizes) * world // (2 * len(idx)), world - 1)
    return [idx[np.repeat(owner, sizes) == r] for r in range(world)]


class Ranks:
    """One process dissects everything: the operations of :class:`TorchRanks` as the
    identity."""

    rank = 0
    world = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the results."""
        return self.rank == 0

    def describe(self) -> dict[str, Any] | None:
        """For summary.json (None: one process)."""
        return None

    def part(self, store: BrodenStore, images: np.ndarray) -> np.ndarray:
        """This rank's images among ``images``."""
        return images

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable)."""
        return obj

    def merge_top_values(self, top: np.ndarray, seen: int) -> tuple[np.ndarray, int]:
        """Each unit's ``k`` largest values over all ranks, ascending (units × k, float64),
        from this rank's (:meth:`StreamingTopK.result`), and the number of values seen."""
        return top, seen

    def merge_top_images(
        self, values: np.ndarray, indices: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each unit's ``k`` best images over all ranks (values descending, ties to the
        lower index) from this rank's (units × ≤ k)."""
        return values, indices

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each int64 tensor over the ranks, in place."""


class TorchRanks(Ranks):
    """The ranks of the default ``torch.distributed`` process group. Collectives run on
    CUDA tensors under NCCL and on CPU tensors otherwise (gloo)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.comm = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )

    def describe(self) -> dict[str, Any] | None:
        return {"world_size": self.world, "backend": self.backend}

    def part(self, store: BrodenStore, images: np.ndarray) -> np.ndarray:
        return split_shards(images, store.shard_size, self.world)[self.rank]

    def broadcast(self, obj: T) -> T:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, device=self.comm)
        return box[0]

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """(world, *t.shape): every rank's ``t`` (same shape everywhere), on the CPU."""
        t = t.to(self.comm).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(out, t)
        return torch.stack(out).cpu()

    def merge_top_values(self, top: np.ndarray, seen: int) -> tuple[np.ndarray, int]:
        k = top.shape[1]
        every = self._gather(torch.from_numpy(np.ascontiguousarray(top)))  # (W, U, k)
        pool = every.permute(1, 0, 2).reshape(top.shape[0], -1).numpy()
        cut = pool.shape[1] - k
        merged = np.sort(np.partition(pool, cut, axis=1)[:, cut:], axis=1)
        total = self._gather(torch.tensor([seen], dtype=torch.int64)).sum()
        return np.ascontiguousarray(merged), int(total)

    def merge_top_images(
        self, values: np.ndarray, indices: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from broden.dissect.topimages import rank_images

        units, have = values.shape
        vals = np.full((units, k), -np.inf)
        idx = np.full((units, k), np.iinfo(np.int64).max, np.int64)
        vals[:, :have], idx[:, :have] = values, indices  # padding never ranks in
        v = self._gather(torch.from_numpy(vals)).permute(1, 0, 2).reshape(units, -1).numpy()
        i = self._gather(torch.from_numpy(idx)).permute(1, 0, 2).reshape(units, -1).numpy()
        return rank_images(v, i, k)

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(self.comm, torch.int64) for t in tensors])
        self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
        a = 0
        for t in tensors:
            t.copy_(flat[a : a + t.numel()].view(t.shape))
            a += t.numel()


LOCAL = Ranks()


def _device(spec: str | torch.device) -> torch.device:
    """``auto`` and ``cuda`` mean this rank's GPU (``LOCAL_RANK``) when CUDA is there."""
    if isinstance(spec, str) and spec in ("auto", "cuda") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    return resolve_device(spec)


def setup(device: str | torch.device) -> tuple[Ranks, torch.device]:
    """Join (or start, from torchrun's environment) the default process group; this
    rank's :class:`Ranks` and device. NCCL when the device is CUDA, gloo otherwise. A
    group this call starts is destroyed at exit (or by :func:`shutdown`)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise DissectError(
            f"--distributed: this torch build ({torch.__version__}) has no torch.distributed"
        )
    dev = _device(device)
    if not dist.is_initialized():
        missing = [v for v in ENV_VARS if v not in os.environ]
        if missing:
            raise DissectError(
                f"--distributed needs the process group's environment, and "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: {LAUNCH}"
            )
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        except (RuntimeError, ValueError) as e:
            raise DissectError(
                f"--distributed: cannot start the process group ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        atexit.register(shutdown)
    elif dist.get_backend() == "nccl" and dev.type == "cuda":
        torch.cuda.set_device(dev)
    return TorchRanks(), dev


def shutdown() -> None:
    """Destroy the default process group, if there is one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process writes files: rank 0, or not distributed at all."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
