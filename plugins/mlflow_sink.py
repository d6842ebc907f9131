"""The ``mlflow`` plugin: every metric, the run manifest and the report in an MLflow run.

Needs MLflow (``pip install "infoshape[mlflow]"``, which installs ``mlflow-skinny``). Enable
it like any sink: ``infoshape train --plugin mlflow`` or ``Session(plugins=["mlflow"])``.

- **Where.** The run active in this process (``mlflow.start_run()`` before the session)
  when ``tracking_uri`` is not set; else a new run in ``experiment`` (default
  ``"infoshape"``) at ``tracking_uri``: default ``MLFLOW_TRACKING_URI`` when set, else the
  local file store ``./mlruns``. MLflow 3 keeps the file store behind
  ``MLFLOW_ALLOW_FILE_STORE=true``; for a file store this plugin sets that variable (when
  unset) in its own process, so nothing but a folder is needed. Any other URI
  (``sqlite:///mlflow.db``, ``http://server:5000``) works as MLflow supports it.
- **Metrics.** Step metrics are logged at each flush (every ``log_every`` steps) with
  ``step=`` their step index, under their own names (``loss``, ``penalty.cr``); epoch
  metrics with ``step=`` the epoch under ``epoch/<name>``. Only finite scalars are logged:
  array metrics and NaN/Inf values stay in the store alone.
- **Manifest.** Params: ``seed``, ``n_train``, ``model``, each plugin's options as
  ``<plugin>.<option>`` and the run config as ``config.<key>``; tags: ``infoshape.run_id``,
  ``infoshape.version``, ``infoshape.plugins``, ``infoshape.store`` and the library versions.
- **Artifacts.** At the end, with a store: the report's PNGs (:func:`infoshape.apps.report.report`)
  under ``report/`` and a text file ``infoshape_store.txt`` holding the store's path.
  A run this plugin created is ended (``FINISHED``); an active run is left open.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from infoshape.errors import InfoshapeWarning, PluginLoadError
from infoshape.hookspecs import hookimpl
from infoshape.options import config_as_dict

__all__ = ["MLflowSink", "MLflowSinkPlugin"]

_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_LENGTH = 6000  # MLflow's limit of a param value


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError as err:
        raise PluginLoadError(
            "mlflow",
            "needs MLflow, which is not installed",
            expected="the mlflow (or mlflow-skinny) package importable",
            got=f"ImportError: {err}",
            fix='pip install "infoshape[mlflow]", or drop the mlflow plugin',
        ) from err
    return mlflow


def _file_store(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file:")


def _flat(prefix: str, value: Any) -> dict[str, str]:
    """Nested mappings as ``prefix.key`` params; other values as JSON text."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}", item))
        return out
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return {prefix: text[:_PARAM_LENGTH]}


class MLflowSink:
    """A :class:`~infoshape.hookspecs.MetricSink` writing to one MLflow run.

    Args:
        tracking_uri: the tracking URI; ``None``: the active run, ``MLFLOW_TRACKING_URI``
            or ``./mlruns``.
        experiment: the experiment of a new run.
        run_name: the name of a new run.
        manifest: the run manifest (params and tags).
        store: the run store's path, if any.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "infoshape",
        run_name: str | None = None,
        manifest: Mapping[str, Any] | None = None,
        store: str | Path | None = None,
    ) -> None:
        mlflow = _import_mlflow()
        from mlflow.tracking import MlflowClient

        active = mlflow.active_run() if tracking_uri is None else None
        if tracking_uri is None and active is None:
            tracking_uri = (
                os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
            )
        uri = tracking_uri or mlflow.get_tracking_uri()
        if _file_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        self.store = Path(store) if store is not None else None
        self._owns_run = active is None
        if active is not None:
            self.run_id = active.info.run_id
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
            name = run_name or (self.store.stem if self.store else None)
            self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        self._log_manifest(dict(manifest or {}))

    def _log_manifest(self, manifest: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        params: dict[str, str] = {}
        for key in ("seed", "n_train", "model"):
            if manifest.get(key) is not None:
                params[key] = str(manifest[key])
        for plugin in manifest.get("plugins", []):
            params.update(_flat(plugin["name"], plugin.get("options") or {}))
        params.update(_flat("config", manifest.get("config") or {}))
        tags = {
            "infoshape.run_id": manifest.get("run_id"),
            "infoshape.version": manifest.get("infoshape_version"),
            "infoshape.plugins": ",".join(p["name"] for p in manifest.get("plugins", [])),
            "infoshape.store": str(self.store) if self.store else None,
            **{f"infoshape.{k}_version": v for k, v in manifest.get("versions", {}).items()},
        }
        self.client.log_batch(
            self.run_id,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None],
        )

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        """Log the finite scalar metrics of one row (``epoch/`` before epoch metrics)."""
        from mlflow.entities import Metric

        prefix = "epoch/" if stage == "epoch" else ""
        now = int(time.time() * 1000)
        rows = [
            Metric(prefix + name, float(value), now, int(index))
            for name, value in metrics.items()
            if np.ndim(value) == 0 and math.isfinite(float(value))
        ]
        for start in range(0, len(rows), _BATCH):
            self.client.log_batch(self.run_id, metrics=rows[start : start + _BATCH])

    def close(self) -> None:
        """Log the report's PNGs and the store path; end a run this sink created."""
        if self.store is not None and self.store.exists():
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "infoshape_store.txt").write_text(f"{self.store.resolve()}\n")
                self.client.log_artifact(self.run_id, str(Path(tmp) / "infoshape_store.txt"))
                try:
                    from infoshape.apps.report import report

                    pngs = report(self.store, Path(tmp) / "report")
                except Exception as err:  # the metrics are logged: the plots are a bonus
                    warnings.warn(
                        f"mlflow: no report artifacts, the report failed: {err}",
                        InfoshapeWarning,
                        stacklevel=2,
                    )
                    pngs = []
                if pngs:
                    self.client.log_artifacts(self.run_id, str(Path(tmp) / "report"), "report")
        if self._owns_run:
            self.client.set_terminated(self.run_id, "FINISHED")


class MLflowSinkPlugin:
    """Logs every metric, the run manifest and the report to MLflow (needs mlflow)."""

    name = "mlflow"

    @attrs.frozen(kw_only=True)
    class Config:
        """Options of the ``mlflow`` plugin.

        Attributes:
            tracking_uri: where runs go; default: the active run, else
                ``MLFLOW_TRACKING_URI``, else the file store ``./mlruns``.
            experiment: the experiment of a new run.
            run_name: the name of a new run; default the store's stem.
        """

        tracking_uri: str | None = None
        experiment: str = "infoshape"
        run_name: str | None = None

    config: Config | None = None

    @hookimpl
    def infoshape_configure(self, config: Config) -> None:
        """Keep the validated options; fail early when MLflow is not installed."""
        _import_mlflow()
        self.config = config

    @hookimpl
    def infoshape_sinks(self, session: Any) -> list[MLflowSink]:
        """One MLflow sink."""
        config = self.config or self.Config()
        store = session.store
        if store is not None:  # the manifest as the store keeps it
            manifest = dict(store.root.attrs)
        else:
            manifest = {
                "seed": session.seed,
                "n_train": session.n_train,
                "plugins": [
                    {"name": name, "options": config_as_dict(session.config_of(name))}
                    for name in session.plugins
                ],
            }
        return [
            MLflowSink(
                tracking_uri=config.tracking_uri,
                experiment=config.experiment,
                run_name=config.run_name,
                manifest=manifest,
                store=store.path if store is not None else None,
            )
        ]
