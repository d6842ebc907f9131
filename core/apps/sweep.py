"""Grid sweeps: ``infoshape sweep`` runs configurations × seeds, one store per cell, resumably.

A sweep is a base training run (any :class:`~infoshape.apps.trainer.TrainConfig` settings) and
a grid of cells, each trained by :func:`infoshape.apps.trainer.train` in turn:

- ``baseline``: the base run as it is (``baseline = false`` drops it);
- one group per **named configuration** (``[sweep.configurations.NAME]``: settings that
  change the base, e.g. ``model_options = {dropout = 0.5}``);
- one group per **plugin × coefficient**: the plugin enabled with its weight option set to
  each value. The option is the one the plugin declares in its ``weight_option`` class
  attribute (``shade``: ``beta``, ``irnn``: ``alpha2``, the Choi–Rhee family:
  ``coefficient``; :mod:`infoshape.hookspecs`), unless ``coefficient_option`` names another
  (one name for every plugin, or a table ``{plugin: option}``);
- every group once per seed.

Every cell is validated before the first one trains: its train settings, each plugin
loads, and each plugin's options (the swept weight included) pass its ``Config``; an
invalid cell stops the sweep with one :class:`~infoshape.errors.ConfigError` that lists
every invalid cell. A cell that fails while training (a valid option refused at run time, a
plugin raising) does not stop the others: it is listed, with its error, under "failed
cells" in ``summary.md`` and in ``sweep.json``.

Cell ``NAME`` writes ``OUT/cells/NAME.zarr``. A cell whose store is complete (root attr
``status == "complete"``) and was trained with the cell's settings is not rerun; a
missing, interrupted or failed one (``status`` ``running``/``failed``) is trained again
from scratch. ``OUT/sweep.json`` lists the cells; ``OUT/summary.md`` and
``OUT/summary.csv`` hold, per group, the mean ± sample standard deviation over seeds of
the test error (%, last epoch), all read back from the stores (:func:`summarize`).

**Measuring** (``measure = ["characteristics"]``): the plugins named in ``measure`` are
enabled in every cell, to measure rather than to regularize, and the summary gains a
column for each of their epoch metrics (every metric named ``<plugin>.*``, at the last
epoch; :mod:`infoshape.apps.sweep_summary`). The core names no plugin: ``measure`` is empty
unless the file or ``--measure`` says otherwise. The old key ``characteristics = true``
still works, with a :class:`DeprecationWarning`, as ``measure = ["characteristics"]``
(``false``: ``measure = []``).

``scheduler=`` (``--scheduler local:N | tcp://HOST:PORT``) trains the cells as tasks of a
dask cluster (:mod:`infoshape.apps.sweep_tasks`), one per worker at a time; the stores
and summaries are those of the serial sweep.

``out`` may be an fsspec URL (``s3://bucket/sweeps/a``, ``--storage-option`` on the
command line, ``storage_options=`` of :func:`run_sweep`): the cells' stores,
``sweep.json`` and the summaries are written there.

Config file (TOML): the ``infoshape train`` keys at top level, the grid under ``[sweep]``::

    model = "mlp"
    dataset = "digits"
    epochs = 20
    [model_options]
    hidden = [100, 100, 100, 100, 100]
    [sweep]
    out = "sweeps/choi_rhee"
    seeds = [0, 1, 2]
    measure = ["characteristics"]
    plugins = ["cr", "l1r", "rr"]
    coefficients = [0.01, 0.1]
    [sweep.configurations.dropout]
    model_options = {dropout = 0.5}
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from infoshape.apps.sweep_command import add_parser, run_command, sweep_settings
from infoshape.apps.sweep_summary import Summary, summarize
from infoshape.errors import ConfigError, InfoshapeError
from infoshape.store import location

__all__ = [
    "Cell",
    "Summary",
    "SweepConfig",
    "SweepResult",
    "add_parser",  # the command line: infoshape.apps.sweep_command
    "cell_status",
    "run_command",
    "run_sweep",
    "summarize",
    "sweep_settings",
    "validate_cells",
    "weight_option",
]

_IGNORED = ("store", "overwrite", "progress", "taps", "device", "data_root")
"""Settings that may differ between a finished cell's store and the sweep (not rerun)."""
_SWEEP_KEYS = (
    "out", "seeds", "plugins", "coefficients", "configurations", "baseline",
    "coefficient_option", "measure",
)  # fmt: skip
_DEPRECATED_KEYS = ("characteristics",)  # -> measure (_measured)


def _refuse(what: str, expected: str, got: Any, fix: str) -> ConfigError:
    return ConfigError(
        f"sweep setting {what!r} is invalid", expected=expected, got=repr(got), fix=fix
    )


def _names(value: Any, what: str, example: str = '["cr", "l1r"]') -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise _refuse(what, "a list of names", value, f"{what} = {example}")
    return tuple(value)


def _numbers(value: Any, what: str, kind: type) -> tuple[Any, ...]:
    value = [value] if isinstance(value, (int, float)) else value
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool)
        for v in value
    )
    if not ok:
        raise _refuse(what, f"a list of {kind.__name__}s", value, f"{what} = [0, 1, 2]")
    return tuple(kind(v) for v in value)


def _merge(base: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``change`` applied: tables merged key by key, plugin lists joined."""
    merged = copy.deepcopy(dict(base))
    for key, value in change.items():
        if key == "plugins":
            merged["plugins"] = list(dict.fromkeys([*merged.get("plugins", []), *value]))
        elif key == "options" and isinstance(value, Mapping):
            options = merged.setdefault("options", {})
            for plugin, table in value.items():
                options[plugin] = {**options.get(plugin, {}), **table}
        elif key == "model_options" and isinstance(value, Mapping):
            merged["model_options"] = {**merged.get("model_options", {}), **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _measured(grid: Mapping[str, Any]) -> tuple[str, ...]:
    """``[sweep] measure``, or the deprecated ``characteristics = true/false`` translated."""
    if "characteristics" not in grid:
        return _names(grid.get("measure", []), "measure", '["characteristics"]')
    old = grid["characteristics"]
    if "measure" in grid or not isinstance(old, bool):
        raise _refuse(
            "characteristics",
            "measure = [...] alone (characteristics = true/false is its old spelling)",
            old,
            'replace it by measure = ["characteristics"] (or measure = [])',
        )
    new = '["characteristics"]' if old else "[]"
    warnings.warn(
        f"[sweep] characteristics = {str(old).lower()} is deprecated; write measure = {new}",
        DeprecationWarning,
        stacklevel=3,
    )
    return ("characteristics",) if old else ()


def weight_option(plugin: str) -> str:
    """The option that holds ``plugin``'s loss weight: its ``weight_option`` attribute.

    Raises:
        PluginLoadError: ``plugin`` is not installed or cannot be imported.
        ConfigError: the plugin declares no weight option.
    """
    from infoshape.plugin_manager import build_plugin_manager

    loaded = build_plugin_manager([plugin]).infos[plugin].plugin
    option = getattr(loaded, "weight_option", None)
    if not isinstance(option, str) or not option:
        raise ConfigError(
            f"plugin {plugin!r} declares no weight option for --coefficient",
            expected="a plugin whose class names the option of its loss weight in "
            'weight_option (e.g. weight_option = "beta")',
            got=f"weight_option = {option!r}",
            fix=f'name the option: [sweep] coefficient_option = {{{plugin} = "OPTION"}}, '
            f"or give {plugin!r} its options in [sweep.configurations.NAME] tables",
        )
    return option


def validate_cells(cells: list[Cell]) -> dict[str, Any]:
    """Each cell's :class:`~infoshape.apps.trainer.TrainConfig`, after checking every cell.

    A cell is valid when its settings make a ``TrainConfig`` and each of its plugins loads
    and accepts its options (:func:`infoshape.options.build_config`). Nothing is trained.

    Raises:
        ConfigError: one or more invalid cells, all of them listed.
    """
    from infoshape.apps.trainer import TrainConfig
    from infoshape.options import build_config
    from infoshape.plugin_manager import build_plugin_manager

    configs, problems, loaded = {}, {}, {}
    for cell in cells:
        try:
            config = TrainConfig.from_mapping({**cell.settings, "progress": False})
            for plugin in config.plugins:
                if plugin not in loaded:
                    loaded[plugin] = build_plugin_manager([plugin]).infos[plugin].plugin
                config_cls = getattr(loaded[plugin], "Config", None)
                build_config(plugin, config_cls, config.options.get(plugin))
        except InfoshapeError as err:
            problems[cell.name] = f"{type(err).__name__}: {err}".splitlines()[0]
            continue
        configs[cell.name] = config
    if problems:
        raise ConfigError(
            f"{len(problems)} of {len(cells)} sweep cells are invalid; nothing was trained",
            expected="every cell's settings and plugin options valid",
            got="; ".join(f"{name}: {problem}" for name, problem in problems.items()),
            fix="correct the sweep's coefficients, options or plugins and run it again",
        )
    return configs


@attrs.frozen(kw_only=True)
class Cell:
    """One training run of a sweep.

    Attributes:
        name: file-safe name, ``<group>-seed<k>``; the store is ``OUT/cells/<name>.zarr``.
        group: the configuration without the seed (``baseline``, ``dropout``, ``cr-0.01``).
        seed: the run's seed.
        settings: the :class:`~infoshape.apps.trainer.TrainConfig` settings (store included).
    """

    name: str
    group: str
    seed: int
    settings: dict[str, Any] = attrs.field(eq=False, repr=False)

    @property
    def store(self) -> location.StorePath:
        """The cell's store path (a ``Path``, or a URL for a sweep at a URL)."""
        return location.normalize(self.settings["store"])


@attrs.frozen(kw_only=True)
class SweepConfig:
    """A sweep: base settings and the grid (module docstring).

    Attributes:
        base: ``TrainConfig`` settings shared by every cell.
        out: output folder (cells, ``sweep.json``, summaries).
        seeds: seeds of every group.
        plugins: plugins swept, one group per plugin and coefficient.
        coefficients: values of each plugin's coefficient option; empty: plugin defaults.
        configurations: named groups, name to the settings they change.
        baseline: include the base run as group ``baseline``.
        coefficient_option: the swept option's name, one for all plugins or a table
            ``{plugin: option}``; ``None`` (and plugins missing from the table): the option
            each plugin declares in its ``weight_option`` attribute.
        measure: plugins enabled in every cell to measure the representation; the
            summary's columns are the test error and their epoch metrics.
    """

    base: dict[str, Any] = attrs.field(factory=dict)
    out: str = "sweeps/sweep"
    seeds: tuple[int, ...] = (0,)
    plugins: tuple[str, ...] = ()
    coefficients: tuple[float, ...] = ()
    configurations: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    baseline: bool = True
    coefficient_option: str | dict[str, str] | None = None
    measure: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> SweepConfig:
        """Build from a parsed TOML file: train keys at top level, the grid under ``sweep``.

        Raises:
            ConfigError: an unknown ``[sweep]`` key or an invalid value.
        """
        settings = dict(settings)
        grid = dict(settings.pop("sweep", {}) or {})
        unknown = sorted(set(grid) - {*_SWEEP_KEYS, *_DEPRECATED_KEYS})
        if unknown:
            raise ConfigError(
                f"unknown sweep setting {unknown[0]!r}",
                expected=f"[sweep] keys among: {', '.join(_SWEEP_KEYS)}",
                got=", ".join(unknown),
                fix="remove it, or move train settings to the top level of the file",
            )
        configurations = grid.get("configurations", {})
        if not isinstance(configurations, Mapping) or not all(
            isinstance(v, Mapping) for v in configurations.values()
        ):
            raise _refuse(
                "configurations",
                "tables of settings",
                configurations,
                "[sweep.configurations.dropout] model_options = {dropout = 0.5}",
            )
        option = grid.get("coefficient_option")
        if not isinstance(option, (str, Mapping, type(None))):
            raise _refuse("coefficient_option", "a name or a table", option, '"coefficient"')
        return cls(
            base=settings,
            out=str(grid.get("out", "sweeps/sweep")),
            seeds=_numbers(grid.get("seeds", [0]), "seeds", int),
            plugins=_names(grid.get("plugins", []), "plugins"),
            coefficients=_numbers(grid.get("coefficients", []), "coefficients", float),
            configurations={k: dict(v) for k, v in configurations.items()},
            baseline=bool(grid.get("baseline", True)),
            coefficient_option=dict(option) if isinstance(option, Mapping) else option,
            measure=_measured(grid),
        )

    def _option(self, plugin: str) -> str:
        option = self.coefficient_option
        if isinstance(option, Mapping):
            option = option.get(plugin)
        return option if option is not None else weight_option(plugin)

    def groups(self) -> list[tuple[str, dict[str, Any]]]:
        """``(group name, settings change)`` in order: baseline, configurations, plugins."""
        groups: list[tuple[str, dict[str, Any]]] = [("baseline", {})] if self.baseline else []
        groups += [(name, change) for name, change in self.configurations.items()]
        for plugin in self.plugins:
            if not self.coefficients:
                groups.append((plugin, {"plugins": [plugin]}))
            for value in self.coefficients:
                options = {plugin: {self._option(plugin): value}}
                groups.append((f"{plugin}-{value:g}", {"plugins": [plugin], "options": options}))
        names = [g for g, _ in groups]
        if len(set(names)) != len(names) or not groups:
            raise ConfigError(
                "the sweep's groups are empty or not unique",
                expected="at least one group, each name once",
                got=", ".join(names) or "(none)",
                fix="rename configurations that clash with plugin names or 'baseline'",
            )
        return groups

    def cells(self) -> list[Cell]:
        """Every cell, groups in :meth:`groups` order, seeds within each group."""
        base = dict(self.base)
        if self.measure:
            base = _merge(base, {"plugins": list(self.measure)})
        cells = []
        for group, change in self.groups():
            for seed in self.seeds:
                name = f"{group}-seed{seed}"
                store = str(location.join(self.out, "cells", f"{name}.zarr"))
                settings = _merge(base, {**change, "seed": seed, "store": store, "overwrite": True})
                cells.append(Cell(name=name, group=group, seed=seed, settings=settings))
        return cells


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def cell_status(cell: Cell, storage_options: Mapping[str, Any] | None = None) -> str:
    """``"complete"`` (done with these settings), ``"missing"``, ``"incomplete"`` or ``"stale"``.

    ``"stale"``: complete, but trained with other settings than the cell's now.
    """
    import zarr

    from infoshape.apps.trainer import TrainConfig

    if not location.exists(cell.store, storage_options):
        return "missing"
    try:
        store = location.zarr_store(cell.store, storage_options, read_only=True)
        attrs_ = dict(zarr.open_group(store, mode="r").attrs)
    except Exception:  # not a readable store: train it again
        return "incomplete"
    if attrs_.get("status") != "complete":
        return "incomplete"
    wanted = TrainConfig.from_mapping(cell.settings).as_dict()
    stored: dict[str, Any] = dict(attrs_.get("config", {}))  # type: ignore[arg-type]
    differs = [k for k in wanted if k not in _IGNORED and _plain(wanted[k]) != stored.get(k)]
    return "stale" if differs else "complete"


@attrs.frozen(kw_only=True)
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        ran: names of the cells trained now.
        skipped: names of the cells already complete.
        failed: ``{cell name: error message}``.
        summary: the summary of every complete cell.
        out: the output folder.
        tracebacks: ``{cell name: the failure's traceback}`` (also in ``sweep.json``).
    """

    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: dict[str, str]
    summary: Summary
    out: location.StorePath
    tracebacks: dict[str, str] = attrs.field(factory=dict)


def run_sweep(
    config: SweepConfig,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    scheduler: Any = None,
) -> SweepResult:
    """Train every cell not yet complete, then write ``sweep.json`` and the summaries.

    ``storage_options`` reach the filesystem of an ``out`` at an fsspec URL.
    ``scheduler``: ``None`` trains the cells here, one after the other; ``"local:N"`` (a
    ``LocalCluster`` of ``N`` worker processes, started and closed here), a scheduler
    address ``"tcp://HOST:PORT"`` or a ``distributed.Client`` makes each cell a task of
    that cluster (:mod:`infoshape.apps.scheduler`), one cell per worker thread at a time;
    the stores and summaries are the same.

    Every cell is validated first (:func:`validate_cells`): an invalid one stops the sweep
    before anything trains. A cell that raises while training is reported in
    :attr:`SweepResult.failed` (its traceback in :attr:`SweepResult.tracebacks`, in
    ``sweep.json`` and in the log) and in the summary, and the sweep goes on;
    its store is marked ``failed`` and the next run trains it again.

    Raises:
        ConfigError: an invalid cell (all of them listed), a swept plugin without a
            weight option, an unreadable ``scheduler`` or no ``distributed`` for one.
        PluginLoadError: a swept plugin is not installed.
    """
    from tqdm.auto import tqdm

    from infoshape.apps.scheduler import local_reads, parse_scheduler
    from infoshape.apps.sweep_tasks import train_cells

    scheduler = parse_scheduler(scheduler)  # a bad spec stops the sweep before any work
    out = location.normalize(config.out)
    cells = config.cells()
    configs = validate_cells(cells)
    if isinstance(out, Path):
        out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": _plain(attrs.asdict(config)),
        "cells": [
            {"name": c.name, "group": c.group, "seed": c.seed, "store": str(c.store)} for c in cells
        ],
    }
    location.write_text(out, "sweep.json", json.dumps(manifest, indent=2), storage_options)
    skipped, todo = [], []
    for cell in cells:
        status = cell_status(cell, storage_options)
        if status == "complete":
            skipped.append(cell.name)
        else:
            todo.append((cell.name, configs[cell.name], status))
    bar = tqdm(
        total=len(cells),
        initial=len(skipped),
        desc="sweep",
        unit="cell",
        disable=not (progress and sys.stderr.isatty()),
    )
    say = log or bar.write
    again = {name: status for name, _, status in todo}

    def start(name: str) -> None:
        status = again[name]
        say(f"{name}: {'training' if status == 'missing' else status + ', training again'}")

    def advance(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update()

    chosen = [(name, config) for name, config, _ in todo]
    outcomes = train_cells(chosen, storage_options, say, start, advance, scheduler)
    bar.close()
    ran = [o.name for o in outcomes if o.error is None]
    failed = {o.name: str(o.error) for o in outcomes if o.error is not None}
    tracebacks = {o.name: str(o.traceback) for o in outcomes if o.error is not None}
    manifest["failed"] = failed
    manifest["tracebacks"] = tracebacks
    location.write_text(out, "sweep.json", json.dumps(manifest, indent=2), storage_options)
    with local_reads():  # not through a live dask Client
        summary = summarize(out, storage_options)
    location.write_text(out, "summary.md", summary.to_markdown(), storage_options)
    location.write_text(out, "summary.csv", summary.to_csv(), storage_options)
    return SweepResult(
        ran=tuple(ran),
        skipped=tuple(skipped),
        failed=failed,
        tracebacks=tracebacks,
        summary=summary,
        out=out,
    )
