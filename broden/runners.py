"""Where build tasks run: in this process, in a local process pool, or on a Dask cluster.

Every runner executes the same per-task functions of :mod:`broden.build`, which read
their shared context (the plan, the staging folder, the store path) from a per-process
state set up once: by the pool's initializer, or, on Dask, from a context scattered to
every worker and installed by the first task a worker runs. Task results come back in
completion order to an ``on_done`` callback in the calling process.

Dask (``--dask ADDRESS`` or ``--dask local:N``) needs ``pip install broden[dask]``. The
cluster's workers write their shards of the store directly, so the store and its staging
folder must be on a filesystem every worker can reach (a local disk for ``local:N``, a
shared one otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Protocol

WORKER_DIED = (
    "a build worker process died (killed, or out of memory); run the same command again to "
    "resume from the finished tasks"
)

Context = tuple[Any, ...]  # the arguments of the worker initializer
Initializer = Callable[..., None]


class RunnerError(Exception):
    """A worker died or the cluster could not be used."""


class Runner(Protocol):
    def run(
        self,
        fn: Callable[..., Any],
        args: Iterable[tuple[Any, ...]],
        on_done: Callable[[Any, tuple[Any, ...]], object],
    ) -> None: ...

    def close(self) -> None: ...


class InProcess:
    """Tasks run one after the other in this process."""

    def __init__(self, initializer: Initializer, context: Context):
        initializer(*context)

    def run(
        self,
        fn: Callable[..., Any],
        args: Iterable[tuple[Any, ...]],
        on_done: Callable[[Any, tuple[Any, ...]], object],
    ) -> None:
        for a in args:
            on_done(fn(*a), a)

    def close(self) -> None:
        pass


class ProcessPool:
    """``workers`` spawned processes (spawn, not fork: zarr runs an event-loop thread)."""

    def __init__(self, workers: int, initializer: Initializer, context: Context):
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=initializer,
            initargs=context,
        )

    def run(
        self,
        fn: Callable[..., Any],
        args: Iterable[tuple[Any, ...]],
        on_done: Callable[[Any, tuple[Any, ...]], object],
    ) -> None:
        futures: dict[Future[Any], tuple[Any, ...]] = {self.pool.submit(fn, *a): a for a in args}
        try:
            for fut in as_completed(futures):
                on_done(fut.result(), futures[fut])
        except BrokenProcessPool:
            raise RunnerError(WORKER_DIED) from None
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _on_dask_worker(
    context_key: str, initializer: Initializer, context: Context, fn: Callable[..., Any], *args: Any
) -> Any:
    """Install the build context in this worker process once, then run one task."""
    import broden.runners as me

    if getattr(me, "_installed", None) != context_key:
        initializer(*context)
        me._installed = context_key  # type: ignore[attr-defined]
    return fn(*args)


class DaskRunner:
    """Tasks on a Dask distributed cluster: ``address`` of a scheduler, or ``local:N`` for a
    LocalCluster of N single-threaded worker processes started here."""

    def __init__(self, address: str, initializer: Initializer, context: Context, key: str):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise RunnerError("--dask needs the dask extra: pip install 'broden[dask]'") from None
        self.cluster = None
        try:
            if address.startswith("local:"):
                n = int(address.split(":", 1)[1])
                self.cluster = LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
                )
                self.client = Client(self.cluster)
            else:
                self.client = Client(address, timeout="10s")
        except ValueError:
            raise RunnerError(f"--dask {address!r}: expected ADDRESS or local:N") from None
        except OSError as e:
            raise RunnerError(f"--dask {address!r}: cannot reach the scheduler ({e})") from None
        self.initializer = initializer
        self.key = key
        # sent once to every worker; tasks refer to it instead of carrying it
        self.context = self.client.scatter(context, broadcast=True, hash=False)

    def run(
        self,
        fn: Callable[..., Any],
        args: Iterable[tuple[Any, ...]],
        on_done: Callable[[Any, tuple[Any, ...]], object],
    ) -> None:
        from dask.distributed import as_completed as dask_completed
        from distributed import KilledWorker

        futures = {
            self.client.submit(
                _on_dask_worker, self.key, self.initializer, self.context, fn, *a, pure=False
            ): a
            for a in args
        }
        try:
            for fut in dask_completed(list(futures)):
                on_done(fut.result(), futures[fut])
        except KilledWorker:
            raise RunnerError(WORKER_DIED) from None
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_runner(
    workers: int, dask: str | None, initializer: Initializer, context: Context, key: str
) -> Runner:
    """The runner for ``--workers`` / ``--dask``."""
    if dask:
        return DaskRunner(dask, initializer, context, key)
    if workers > 1:
        return ProcessPool(workers, initializer, context)
    return InProcess(initializer, context)
