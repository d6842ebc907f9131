"""The store's writer thread: one bounded queue of write jobs, run in order.

Every write of a run store is a job queued here and run on one background thread, so
training never waits for the disk unless ``queue_size`` jobs are pending (back-pressure
instead of unbounded memory). The first failing job stops the writer; every later
submit, and :meth:`WriterThread.join`, raises :class:`~infoshape.StoreWriteError`
naming it, and the rows committed before it stay readable.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infoshape.errors import StoreError, StoreWriteError

__all__ = ["WriterThread", "free_space"]

log = logging.getLogger("infoshape.store")
_STOP = object()


class WriterThread:
    """Runs the write jobs of the store at ``path`` on one daemon thread, in order.

    Args:
        path: the store (named in messages).
        queue_size: how many jobs may be pending before :meth:`submit` waits.
    """

    def __init__(self, path: str | Path, queue_size: int) -> None:
        self.path = path
        self.queue: queue.Queue[Any] = _DrainingQueue(maxsize=queue_size)
        self.error: BaseException | None = None
        self.closed = False
        self._warned_full = False
        self._thread = threading.Thread(target=self._run, name="infoshape-store", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            try:
                if job is _STOP:
                    return
                if self.error is None:
                    job()
            except BaseException as err:
                self.error = err
                log.error("infoshape store writer failed: %r", err)
            finally:
                self.queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``, waiting while the queue is full (logged once, naming the option).

        Raises:
            StoreWriteError: an earlier job failed.
            StoreError: the writer was stopped.
        """
        self.raise_if_failed()
        if self.closed:
            raise StoreError(f"the store {self.path} is closed", fix="open a new Session")
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "infoshape store writer queue is full (%d pending writes): training waits "
                    "for the disk; if this repeats, raise the queue size with "
                    "Session(store_options={'queue_size': %d}) (RunStore(queue_size=...)) or "
                    "cut the stream budget "
                    "(Tap(..., store=Stream(every=..., samples=..., project=...)))",
                    self.queue.maxsize,
                    2 * self.queue.maxsize,
                )
            self.queue.put(job)

    def join(self) -> None:
        """Block until every queued job ran; raise if one failed."""
        self.queue.join()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise :class:`~infoshape.StoreWriteError` for the job that stopped the writer."""
        if self.error is not None:
            err = self.error
            full = isinstance(err, OSError) and err.errno == errno.ENOSPC
            raise StoreWriteError(
                f"writing the store {self.path} failed: {type(err).__name__}: {err}"
                + (f" ({free_space(self.path)})" if full else ""),
                expected="a writable store with free space",
                got=repr(err),
                fix="free disk space or fix permissions; every epoch/step written before the "
                "failure is committed and readable with infoshape.open_store",
            ) from err

    def stop(self) -> None:
        """Refuse further jobs, let the queued ones finish and end the thread."""
        self.closed = True
        self.queue.put(_STOP)
        self._thread.join()


class _DrainingQueue(queue.Queue):
    """A bounded queue whose waiting producer is woken once half of it has drained.

    ``queue.Queue`` wakes a producer blocked on a full queue at every ``get``, so a
    training thread under back-pressure and the writer thread trade the GIL once per
    write; waking it at half capacity lets the writer write several in a row.
    """

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the next item, waiting for one (``timeout`` is not supported)."""
        with self.not_empty:
            while not self._qsize():
                self.not_empty.wait()
            item = self._get()
            if self._qsize() <= self.maxsize // 2:
                self.not_full.notify_all()
            return item


def free_space(path: str | Path) -> str:
    """How much space is free on the file system holding ``path``, as text."""
    if isinstance(path, str) and "://" in path:
        return f"free space at {path} unknown (not a local file system)"
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return f"free space on the file system of {where} unknown"
    return f"{free / 2**20:.1f} MiB free on the file system of {where}"
