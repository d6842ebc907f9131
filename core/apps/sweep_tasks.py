"""Training a sweep's cells: one after the other here, or as tasks on a dask cluster.

:func:`train_cells` is the loop of :func:`infoshape.apps.sweep.run_sweep`. Each cell is
one call of :func:`train_cell` (in this process, or submitted to the cluster of
``scheduler``, :mod:`infoshape.apps.scheduler`); a cell that raises is recorded with its
error and traceback and the other cells go on.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

__all__ = ["CellOutcome", "train_cell", "train_cells"]


@attrs.frozen(kw_only=True)
class CellOutcome:
    """What training one cell gave: its accuracy and time, or its error and traceback."""

    name: str
    test_accuracy: float = float("nan")
    elapsed_s: float = float("nan")
    error: str | None = None
    traceback: str | None = None


def train_cell(
    name: str, config: Any, storage_options: Mapping[str, Any] | None = None
) -> CellOutcome:
    """Train one cell (a :class:`~infoshape.apps.trainer.TrainConfig`); never raises.

    Runs where it is called: in this process, or on a dask worker (the task of a cell).
    """
    from infoshape.apps.trainer import train

    try:
        result = train(config, storage_options=storage_options)
    except Exception as err:  # any failure of one cell: reported, the others go on
        return CellOutcome(
            name=name,
            error=f"{type(err).__name__}: {err}",
            traceback="".join(traceback.format_exception(err)),
        )
    return CellOutcome(name=name, test_accuracy=result.test_accuracy, elapsed_s=result.elapsed_s)


def train_cells(
    todo: Sequence[tuple[str, Any]],
    storage_options: Mapping[str, Any] | None,
    say: Callable[[str], None],
    start: Callable[[str], None],
    advance: Callable[[str], None],
    scheduler: Any = None,
) -> list[CellOutcome]:
    """Train each ``(name, config)`` of ``todo``; the outcomes in ``todo``'s order.

    Args:
        todo: the cells to train, with their ``TrainConfig``.
        storage_options: options of the filesystem of stores at fsspec URLs.
        say: reports a line (a cell trained, or failed, with its traceback).
        start: called with a cell's name as it starts (on a cluster: as it is submitted).
        advance: called with a cell's name as it finishes (the progress bar).
        scheduler: ``None`` (here, one cell after the other), ``local:N``, a scheduler
            address or a ``distributed.Client``
            (:func:`infoshape.apps.scheduler.parse_scheduler`): each cell a task of that
            cluster, one per worker thread at a time.

    Raises:
        ConfigError: an unreadable ``scheduler`` or no ``distributed``.
    """
    from infoshape.apps.scheduler import connect, parse_scheduler

    spec = parse_scheduler(scheduler)
    outcomes: dict[str, CellOutcome] = {}
    if spec is None:
        for name, config in todo:
            start(name)
            outcomes[name] = _report(train_cell(name, config, storage_options), say)
            advance(name)
        return [outcomes[name] for name, _ in todo]
    if not todo:
        return []
    import distributed

    with connect(spec) as client:
        say(f"{len(todo)} cells on {spec} ({len(client.scheduler_info()['workers'])} workers)")
        futures, names = [], {}
        for name, config in todo:
            start(name)
            key = f"infoshape-cell-{name}-{uuid.uuid4().hex[:8]}"
            futures.append(
                client.submit(train_cell, name, config, storage_options, pure=False, key=key)
            )
            names[key] = name
        for future in distributed.as_completed(futures):
            try:
                outcome = future.result()
            except Exception as err:  # the task itself failed (a worker died): this cell only
                outcome = CellOutcome(
                    name=names[future.key],
                    error=f"{type(err).__name__}: {err}",
                    traceback="".join(traceback.format_exception(err)),
                )
            advance(outcome.name)
            outcomes[outcome.name] = _report(outcome, say)
    return [outcomes[name] for name, _ in todo]


def _report(outcome: CellOutcome, say: Callable[[str], None]) -> CellOutcome:
    if outcome.error is not None:
        say(f"{outcome.name}: FAILED {outcome.error}\n{outcome.traceback}")
    else:
        say(
            f"{outcome.name}: test accuracy {outcome.test_accuracy:.4f} ({outcome.elapsed_s:.1f} s)"
        )
    return outcome
