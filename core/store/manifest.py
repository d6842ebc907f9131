"""The run manifest: what a store's root attributes say about the run that wrote it.

Written once, when the store is created (:class:`~infoshape.store.RunStore`), from what
the session knows at start: the run id (one for every rank's store), versions, the seed,
the plugins with their validated options, the run's configuration and the model.
"""

from __future__ import annotations

import datetime as _dt
import platform
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infoshape import distributed
from infoshape.options import config_as_dict
from infoshape.store import location

__all__ = ["build_manifest"]


def build_manifest(
    *,
    store: str | Path,
    plugins: Mapping[str, Any],
    configs: Mapping[str, Any],
    run_config: Mapping[str, Any] | None,
    seed: int | None,
    n_train: int | None,
    model: str,
) -> dict[str, Any]:
    """The manifest of a run whose store (rank 0's path) is ``store``.

    Args:
        store: the store path as given (each rank writes ``rank_store_path(store, rank)``).
        plugins: plugin name to its :class:`~infoshape.plugin_manager.PluginInfo`.
        configs: plugin name to its validated config instance.
        run_config: extra run configuration (the CLI's flags).
        seed: the run's seed.
        n_train: number of training samples.
        model: the model's class name.
    """
    import xarray
    import zarr

    from infoshape import __version__

    run_id = [uuid.uuid4().hex]
    extra: dict[str, Any] = {}
    if distributed.is_distributed():  # one run id for the stores of all ranks
        import torch.distributed as dist

        dist.broadcast_object_list(run_id, src=0)
        world_size = distributed.world_size()
        extra["distributed"] = {
            "rank": distributed.rank(),
            "world_size": world_size,
            "backend": str(dist.get_backend()),
            "probe_sharding": "strided",
            "rank_stores": [
                location.name_of(distributed.rank_store_path(store, r)) for r in range(world_size)
            ],
        }
    return {
        "run_id": run_id[0],
        **extra,
        "infoshape_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "n_train": n_train,
        "plugins": [
            {
                "name": name,
                "version": info.version,
                "distribution": info.distribution,
                "options": config_as_dict(configs.get(name)),
            }
            for name, info in plugins.items()
        ],
        "config": dict(run_config or {}),
        "model": model,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "zarr": zarr.__version__,
            "xarray": xarray.__version__,
            "numpy": np.__version__,
        },
    }
