"""Which captures a run stores, and when: the step of the batch's path that reaches the store.

A tap's ``store`` mode says where its captures go (:class:`~infoshape.Tap`): ``"probe"``
(the probe set's captures at each epoch end, ``probe/``), ``"stream"`` (training
batches every ``stream_every`` steps, ``stream/``, under the tap's budget) or ``"both"``.
:class:`TapWriter` reads the capture's resolved taps and hands the selected captures to
the :class:`~infoshape.store.RunStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from infoshape.capture import Capture
    from infoshape.probe import Probe
    from infoshape.store.run_store import RunStore

__all__ = ["TapWriter"]


class TapWriter:
    """Writes the stored taps of ``capture`` to ``store``.

    Args:
        store: the run store (this rank's).
        capture: the session's capture (its taps resolved on the model).
    """

    def __init__(self, store: RunStore, capture: Capture) -> None:
        self.store = store
        self.capture = capture

    def _names(self, modes: tuple[str, ...], step: int | None = None) -> dict[str, Any]:
        """Capture name to its resolved tap, for the taps stored in ``modes`` (at ``step``)."""
        return {
            name: r
            for r in self.capture.resolved
            if r.tap.store_mode in modes and (step is None or step % r.tap.stream_every == 0)
            for name in self.capture.names(r)
        }

    def write_step(
        self, step: int, captures: Mapping[str, torch.Tensor], labels: Any, index: Any
    ) -> None:
        """Queue a training batch's captures of the stream taps due at ``step``."""
        taps = self._names(("stream", "both"), step)
        if taps:
            self.store.write_stream(
                step,
                {n: captures[n] for n in taps if n in captures},
                labels=labels,
                index=index,
                taps={n: (r.module, r.point, r.tap) for n, r in taps.items()},
            )

    def write_probe(self, epoch: int, captures: Mapping[str, torch.Tensor], probe: Probe) -> None:
        """Queue the probe set's captures of the probe taps for ``epoch``."""
        taps = self._names(("probe", "both"))
        if taps:
            self.store.write_probe(
                epoch,
                {n: captures[n] for n in taps},
                probe=probe,
                taps={n: (r.module, r.point) for n, r in taps.items()},
            )

    def end_epoch(self, epoch: int) -> None:
        """Queue the stream taps' reservoirs of ``epoch``."""
        self.store.end_epoch(epoch)
