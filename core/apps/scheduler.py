"""Where sweeps and analyses run: in this process (default) or on a ``dask.distributed`` cluster.

``--scheduler`` (``scheduler=`` of :func:`~infoshape.apps.sweep.run_sweep` and
:func:`~infoshape.apps.analysis.analyze_runs`) takes:

- nothing (``None``): everything runs in this process, one task after the other;
- ``local:N``: a :class:`distributed.LocalCluster` of ``N`` worker processes on this
  machine, one thread each (one task per worker at a time), started for the command
  and closed after it;
- ``tcp://HOST:PORT`` (or ``tls://...``): an existing scheduler, started with
  ``dask scheduler`` and ``dask worker`` (or on a batch cluster through
  ``dask-jobqueue``); start its workers with ``--nthreads 1`` so that each runs one
  task at a time. The workers must have infoshape (and the plugins the tasks use)
  installed and reach the stores (a shared disk, or stores at fsspec URLs).

On every worker, :class:`infoshape.apps.dask_worker.TorchThreads` sets
``torch.set_num_threads(k)``, ``k`` the machine's cores divided by the task slots (worker
threads) that run on it, at least 1, so that ``N`` workers do not oversubscribe the cores.
``distributed`` is an optional extra (``pip install infoshape[distributed]``); nothing
imports it unless a scheduler is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs

from infoshape.errors import ConfigError

__all__ = ["SchedulerSpec", "connect", "local_reads", "parse_scheduler", "worker_threads"]

_FIX = "pass --scheduler local:2 (2 worker processes here) or tcp://HOST:8786 (a running scheduler)"


@attrs.frozen
class SchedulerSpec:
    """A parsed ``--scheduler``: ``workers`` local processes, or an ``address`` to connect to."""

    workers: int | None = None
    address: str | None = None

    def __str__(self) -> str:
        return f"local:{self.workers}" if self.address is None else str(self.address)


def _is_client(spec: Any) -> bool:
    return type(spec).__name__ == "Client" and hasattr(spec, "submit")


def parse_scheduler(spec: Any) -> Any:
    """``None`` (in-process), ``local:N`` or a scheduler address, as a :class:`SchedulerSpec`.

    A ``distributed.Client`` (a cluster the caller holds) is returned as it is.

    Raises:
        ConfigError: anything else, or ``local:N`` with ``N < 1``.
    """
    if spec is None or isinstance(spec, SchedulerSpec) or _is_client(spec):
        return spec
    text = str(spec).strip()
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if count.isdigit() and int(count) >= 1:
            return SchedulerSpec(workers=int(count))
    else:
        protocol, _, host = text.partition("://")
        if protocol in ("tcp", "tls", "inproc", "ucx") and host:
            return SchedulerSpec(address=text)
    raise ConfigError(
        "cannot read the scheduler",
        expected="local:N (N >= 1 worker processes on this machine) or a scheduler address "
        "tcp://HOST:PORT",
        got=repr(spec),
        fix=_FIX,
    )


def local_reads() -> Any:
    """A context where lazy (dask) arrays of a store are read here, in this thread.

    Not on the ``distributed`` cluster that a live ``Client`` makes dask's default: a
    slab is read where it is estimated or summarized (a worker's task waiting on other
    tasks of the same busy workers would wait for ever).
    """
    import dask

    return dask.config.set(scheduler="synchronous")


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as err:
        raise ConfigError(
            "a scheduler needs dask.distributed, which is not installed",
            expected="the distributed package (the infoshape[distributed] extra)",
            got=f"ImportError: {err}",
            fix="pip install 'infoshape[distributed]', or leave out --scheduler to run here",
        ) from err
    return distributed


def worker_threads(cores: int, slots: int) -> int:
    """Torch threads of each task: ``cores // slots``, at least 1."""
    return max(1, cores // max(1, slots))


def _slots_per_host(client: Any) -> dict[str, int]:
    slots: dict[str, int] = {}
    for address, info in client.scheduler_info()["workers"].items():
        host = address.split("://", 1)[-1].rsplit(":", 1)[0]
        slots[host] = slots.get(host, 0) + int(info.get("nthreads", 1))
    return slots


@contextlib.contextmanager
def connect(spec: Any) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``spec``, its workers' torch threads set.

    ``local:N`` starts a ``LocalCluster`` of ``N`` processes of one thread each (closed on
    exit); an address connects to that scheduler (left running on exit); a ``Client`` is
    used as it is (left open on exit).

    Raises:
        ConfigError: an unreadable ``spec``, ``distributed`` not installed, or no scheduler
            at the address.
    """
    parsed = parse_scheduler(spec)
    assert parsed is not None
    distributed = _distributed()
    with contextlib.ExitStack() as stack:
        if _is_client(parsed):
            client = parsed
        elif parsed.address is None:
            cluster = distributed.LocalCluster(
                n_workers=parsed.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            stack.enter_context(cluster)
            client = stack.enter_context(distributed.Client(cluster))
        else:
            try:
                client = stack.enter_context(distributed.Client(parsed.address, timeout="10s"))
            except OSError as err:
                raise ConfigError(
                    f"no dask scheduler answers at {parsed.address}",
                    expected="a running scheduler (dask scheduler; dask worker ADDRESS)",
                    got=f"{type(err).__name__}: {err}",
                    fix="start the scheduler and its workers, or " + _FIX,
                ) from err
        from infoshape.apps.dask_worker import TorchThreads

        client.register_plugin(TorchThreads(_slots_per_host(client)))
        yield client
