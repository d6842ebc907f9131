"""PyTorch Lightning integration (``pip install infoshape[lightning]``).

Add the callback to the ``Trainer`` and make one change in ``training_step``::

    from infoshape.apps.lightning import InfoshapeCallback

    class Model(lightning.pytorch.LightningModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.infoshape.loss(self(x), y)   # was: F.cross_entropy(self(x), y)

    callback = InfoshapeCallback(plugins=["kl_pairwise"], store="runs/a.zarr",
                                 probe=(x_probe, y_probe), taps=[Tap("fc1", store=True)])
    lightning.pytorch.Trainer(callbacks=[callback], max_epochs=10).fit(Model(), loader)

The callback opens a :class:`~infoshape.Session` on the LightningModule when
fitting starts (as ``pl_module.infoshape``), calls ``step_end`` after every
training batch and ``epoch_end`` (with the probe set) after every training
epoch, and closes the session when fitting ends (status ``"failed"`` on an
exception). Under Lightning's DDP strategy each rank's session works as
described in :mod:`infoshape.distributed`. The session's state (step, epoch,
plugin state) is saved in Lightning checkpoints; fitting from a checkpoint
(``ckpt_path=``) restores it and reopens the store for appending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infoshape.capture import Tap
from infoshape.errors import ConfigError
from infoshape.probe import Probe
from infoshape.session import Session

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # the standalone package has the same API
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer  # type: ignore
    except ImportError as err:
        raise ConfigError(
            "infoshape.apps.lightning needs PyTorch Lightning",
            expected="the lightning (or pytorch-lightning) package",
            got=f"ImportError: {err}",
            fix="pip install 'infoshape[lightning]'",
        ) from err

__all__ = ["InfoshapeCallback"]


class InfoshapeCallback(Callback):
    """Runs an infoshape :class:`~infoshape.Session` alongside ``Trainer.fit``.

    Args:
        plugins: plugin names or objects, as for :class:`~infoshape.Session`.
        options: per-plugin options.
        store: the zarr store to write (``None``: no store).
        probe: the probe set passed at each training epoch end (``(x, y)`` or a
            :class:`~infoshape.Probe`), or ``None``.
        taps: extra taps (module names relative to the LightningModule).
        attribute: the LightningModule attribute that holds the session.
        **session_options: other :class:`~infoshape.Session` arguments (``n_train``,
            ``seed``, ``overwrite``, ``on_nonfinite`` ...).
    """

    def __init__(
        self,
        plugins: Sequence[str | Any] = (),
        options: Mapping[str, Mapping[str, Any]] | None = None,
        store: str | Path | None = None,
        probe: Probe | tuple | None = None,
        taps: Iterable[Tap] = (),
        attribute: str = "infoshape",
        **session_options: Any,
    ) -> None:
        self.plugins = list(plugins)
        self.options = dict(options or {})
        self.store = store
        self.probe = probe
        self.taps = list(taps)
        self.attribute = attribute
        self.session_options = session_options
        self.session: Session | None = None
        self._resume: Mapping[str, Any] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open the session on the module (after a checkpoint's state was loaded)."""
        self.session = Session(
            pl_module,
            plugins=self.plugins,
            options=self.options,
            store=self.store,
            taps=self.taps,
            resume=self._resume,
            **self.session_options,
        )
        setattr(pl_module, self.attribute, self.session)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        """``session.step_end()``: the step's metrics, streamed taps, step hooks."""
        self._session().step_end()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``session.epoch_end(probe)``: the probe pass, stored taps, epoch metrics."""
        self._session().epoch_end(probe=self.probe)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the session (status ``"complete"``)."""
        if self.session is not None:
            self.session.close()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Close the session with status ``"failed"``."""
        if self.session is not None:
            self.session.close(status="failed")

    def state_dict(self) -> dict[str, Any]:
        """The session's :meth:`~infoshape.Session.state_dict`, kept in Lightning checkpoints."""
        if self.session is None or self.session.closed:
            return dict(self._resume or {})
        self.session.flush()  # the checkpoint never runs ahead of the store
        return self.session.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's session state for the session opened at fit start."""
        self._resume = dict(state_dict) or None

    def _session(self) -> Session:
        if self.session is None:
            raise ConfigError(
                "the infoshape session is not open",
                expected="Trainer.fit with InfoshapeCallback in callbacks",
                got="a training hook before on_fit_start",
                fix="pass the callback to the Trainer: Trainer(callbacks=[InfoshapeCallback()])",
            )
        return self.session
