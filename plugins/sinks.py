"""The ``csv`` and ``tensorboard`` plugins: metric sinks beside the store."""

from __future__ import annotations

from pathlib import Path

import attrs

from infoshape.hookspecs import hookimpl
from infoshape.sinks import CSVSink, TensorBoardSink

__all__ = ["CSVSinkPlugin", "TensorBoardSinkPlugin"]


def _beside_store(session, suffix: str) -> Path:
    store = session.store
    if store is not None:
        return store.path.with_name(store.path.stem + suffix)
    return Path("runs") / f"infoshape{suffix}"


class CSVSinkPlugin:
    """Writes every scalar metric to a long-format CSV file (``stage,index,name,value``)."""

    name = "csv"

    @attrs.frozen(kw_only=True)
    class Config:
        """Options of the ``csv`` plugin.

        Attributes:
            path: the CSV file; default ``<store stem>.metrics.csv`` beside the store.
            append: append to an existing file instead of replacing it.
        """

        path: str | None = None
        append: bool = False

    config: Config | None = None

    @hookimpl
    def infoshape_configure(self, config: Config) -> None:
        """Keep the validated options."""
        self.config = config

    @hookimpl
    def infoshape_sinks(self, session) -> list[CSVSink]:
        """One CSV sink."""
        config = self.config or self.Config()
        path = Path(config.path) if config.path else _beside_store(session, ".metrics.csv")
        return [CSVSink(path, append=config.append)]


class TensorBoardSinkPlugin:
    """Writes every metric to TensorBoard event files (needs the tensorboard package)."""

    name = "tensorboard"

    @attrs.frozen(kw_only=True)
    class Config:
        """Options of the ``tensorboard`` plugin.

        Attributes:
            log_dir: the event-file folder; default ``<store stem>.tb`` beside the store.
        """

        log_dir: str | None = None

    config: Config | None = None

    @hookimpl
    def infoshape_configure(self, config: Config) -> None:
        """Keep the validated options."""
        self.config = config

    @hookimpl
    def infoshape_sinks(self, session) -> list[TensorBoardSink]:
        """One TensorBoard sink."""
        config = self.config or self.Config()
        log_dir = Path(config.log_dir) if config.log_dir else _beside_store(session, ".tb")
        return [TensorBoardSink(log_dir)]
