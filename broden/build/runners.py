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

import os
import signal
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Protocol

from broden.errors import RunnerError

WORKER_DIED = (
    "a build worker process died (killed, or out of memory); run the same command again to "
    "resume from the finished tasks"
)

#: test-only: see :func:`_on_dask_worker`
KILL_WORKER_ONCE_ENV = "BRODEN_TEST_KILL_WORKER_ONCE"

Context = tuple[Any, ...]  # the arguments of the worker initializer
Initializer = Callable[..., None]


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


def _spawn_hint() -> str:
    """Why a worker may die before its first task: started by spawn, it imports the
    calling script again, and a script that builds at import time starts a pool again."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not hasattr(main, "__file__"):
        return ""  # not a script run as `python script.py` (the broden command, python -m)
    return (
        f". No worker finished a task: if {main.__file__} calls broden's build or add with "
        'workers > 1, put that call under `if __name__ == "__main__":` (worker processes '
        "are started with spawn, which imports the script again)"
    )


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
        self.done = getattr(self, "done", 0)
        try:
            for fut in as_completed(futures):
                on_done(fut.result(), futures[fut])
                self.done += 1
        except BrokenProcessPool:
            raise RunnerError(WORKER_DIED + (_spawn_hint() if not self.done else "")) from None
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _on_dask_worker(
    context_key: str, initializer: Initializer, context: Context, fn: Callable[..., Any], *args: Any
) -> Any:
    """Install the build context in this worker process once, then run one task.

    Test-only hook: when the environment variable ``BRODEN_TEST_KILL_WORKER_ONCE`` names a
    file that does not exist yet, the first worker process to create it (``O_EXCL``) kills
    itself with SIGKILL before running its task, so exactly one worker dies, once, in
    the middle of a build (the tests check that Dask re-runs its tasks). Never set it
    outside tests.
    """
    me = sys.modules[__name__]

    marker = os.environ.get(KILL_WORKER_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    if getattr(me, "_installed", None) != context_key:
        initializer(*context)
        me._installed = context_key  # type: ignore[attr-defined]
    return fn(*args)


class DaskRunner:
    """Tasks on a Dask distributed cluster: ``address`` of a scheduler, or ``local:N`` for a
    LocalCluster of N single-threaded worker processes started here.

    A worker lost in the middle of a build (killed, out of memory, its machine gone) costs
    no more than its tasks: the scheduler runs them again on the other workers (and a
    LocalCluster's nanny starts a new worker process). Every task is idempotent (it
    rewrites its whole output and records it last), so the store is the same as without
    the loss. Only a task that was running on ``distributed.scheduler.allowed-failures``
    + 1 (Dask's default: 4) workers that all died is given up: Dask's ``KilledWorker``
    becomes a :class:`RunnerError` (rerun the command to resume). If the lost workers
    held every copy of the build context, it is sent again and the waiting tasks
    resubmitted.
    """

    def __init__(self, address: str, initializer: Initializer, context: Context, key: str):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise RunnerError("--dask needs the dask extra: pip install 'broden[dask]'") from None
        self.cluster = None
        try:
            if address.startswith("local:"):
                import dask.config

                n = int(address.split(":", 1)[1])
                # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns
                # off glibc's adaptive mmap threshold: every large temporary array is then
                # mapped and unmapped afresh. A build of 192 replicated fixture photos on
                # local:2 took 23 s of worker CPU time with it, 16 s without (a 2-process
                # pool: 13 s). None unsets it; a value in the environment still wins.
                with dask.config.set({_TRIM: None}):
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
        self._context = context
        self._scatter()

    def _scatter(self) -> None:
        # sent once to every worker; tasks refer to it instead of carrying it
        self.context = self.client.scatter(self._context, broadcast=True, hash=False)

    def run(
        self,
        fn: Callable[..., Any],
        args: Iterable[tuple[Any, ...]],
        on_done: Callable[[Any, tuple[Any, ...]], object],
    ) -> None:
        from concurrent.futures import CancelledError

        from dask.distributed import as_completed as dask_completed
        from distributed import KilledWorker

        def submit(todo: Iterable[tuple[Any, ...]]) -> dict[Any, tuple[Any, ...]]:
            return {
                self.client.submit(
                    _on_dask_worker, self.key, self.initializer, self.context, fn, *a, pure=False
                ): a
                for a in todo
            }

        pending = submit(args)
        submitted = list(pending)
        resent = 0
        try:
            while pending:
                lost: list[tuple[Any, ...]] = []
                for fut in dask_completed(list(pending)):
                    a = pending.pop(fut)
                    try:
                        result = fut.result()
                    except CancelledError:
                        # the scheduler forgot a dependency: the scattered context, when
                        # the workers that died held all its copies
                        lost.append(a)
                        continue
                    on_done(result, a)
                if lost:
                    resent += 1
                    if resent > _allowed_failures() + 1:
                        raise RunnerError(WORKER_DIED)
                    self._scatter()
                    pending = submit(lost)
                    submitted.extend(pending)
        except KilledWorker as e:
            tries = e.allowed_failures + 1
            raise RunnerError(
                f"{WORKER_DIED} (a worker running the same Dask task died {tries} "
                f"time{'s' * (tries > 1)}; distributed.scheduler.allowed-failures is "
                f"{e.allowed_failures})"
            ) from None
        finally:
            for fut in submitted:
                fut.cancel()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def _allowed_failures() -> int:
    import dask.config

    return int(dask.config.get("distributed.scheduler.allowed-failures", 3))


def make_runner(
    workers: int, dask: str | None, initializer: Initializer, context: Context, key: str
) -> Runner:
    """The runner for ``--workers`` / ``--dask``."""
    if dask:
        return DaskRunner(dask, initializer, context, key)
    if workers > 1:
        return ProcessPool(workers, initializer, context)
    return InProcess(initializer, context)
