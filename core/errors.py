"""Every exception and warning type infoshape raises.

Each message says what was expected, what was got, and how to fix it
(STYLE.md §5). The types share :class:`InfoshapeError`, so ``except
infoshape.InfoshapeError`` catches all of them, except :class:`RunInterrupted`: an
interrupt (Ctrl-C) stays a ``KeyboardInterrupt``, which ``except Exception`` does
not swallow. Warnings share
:class:`InfoshapeWarning`.
"""

from __future__ import annotations

import sysconfig
import traceback
import warnings
from pathlib import Path

__all__ = [
    "CaptureError",
    "ConfigError",
    "DatasetNotFoundError",
    "EstimatorAssumptionWarning",
    "InfoshapeError",
    "InfoshapeWarning",
    "NonFiniteError",
    "PluginError",
    "PluginHookError",
    "PluginLoadError",
    "RunInterrupted",
    "StoreError",
    "StoreWriteError",
    "TapError",
    "UnknownNameError",
]


class InfoshapeError(Exception):
    """Base class of every infoshape error."""


def _message(problem: str, *, expected: str | None, got: str | None, fix: str | None) -> str:
    parts = [problem]
    if expected is not None:
        parts.append(f"expected: {expected}")
    if got is not None:
        parts.append(f"got: {got}")
    if fix is not None:
        parts.append(f"fix: {fix}")
    return "\n  ".join(parts)


class _Explained(InfoshapeError):
    """An error built from a problem, the expectation, what was got and a fix."""

    def __init__(
        self,
        problem: str,
        *,
        expected: str | None = None,
        got: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem, self.expected, self.got, self.fix = problem, expected, got, fix
        super().__init__(_message(problem, expected=expected, got=got, fix=fix))


class ConfigError(_Explained, ValueError):
    """A run, session or plugin option is unknown, of the wrong type or out of range."""


class UnknownNameError(_Explained, KeyError):
    """A name (plugin, dataset, model, estimator) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class PluginError(_Explained):
    """A plugin misbehaves (base of the plugin errors)."""


class PluginLoadError(PluginError):
    """A plugin cannot be loaded: import error, bad hook name, bad option.

    Attributes:
        plugin: the entry-point (or object) name of the plugin.
    """

    def __init__(self, plugin: str, problem: str, **kwargs: str | None) -> None:
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r}: {problem}", **kwargs)


class PluginHookError(PluginError):
    """A plugin raised inside a hook, or returned a value of the wrong type."""

    def __init__(self, plugin: str, hook: str, problem: str, **kwargs: str | None) -> None:
        self.plugin, self.hook = plugin, hook
        super().__init__(f"plugin {plugin!r} in hook {hook}: {problem}", **kwargs)


class TapError(_Explained, ValueError):
    """A tap matches no module, or two taps claim the same name."""


class CaptureError(_Explained, RuntimeError):
    """A captured tensor is missing or of the wrong kind."""


class NonFiniteError(_Explained, FloatingPointError):
    """A captured tensor, a penalty or the loss holds NaN or Inf."""


def report_nonfinite(policy: str, problem: str, *, expected: str, got: str, fix: str) -> None:
    """Warn (``policy="warn"``) or raise :class:`NonFiniteError` for NaN/Inf values."""
    if policy == "warn":
        warnings.warn(problem, RuntimeWarning, stacklevel=4)
        return
    raise NonFiniteError(problem, expected=expected, got=got, fix=fix)


def raised_at(err: BaseException) -> str:
    """Where ``err`` was raised: ``file.py:LINE in function`` of its innermost frame."""
    frames = traceback.extract_tb(err.__traceback__)
    stdlib = sysconfig.get_paths()["stdlib"]
    own = [f for f in frames if not f.filename.startswith(stdlib)] or frames  # not pathlib's
    if not own:
        return "(unknown place)"
    return f"{Path(own[-1].filename).name}:{own[-1].lineno} in {own[-1].name}"


class RunInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, SIGINT); the epochs completed before it are kept.

    A ``KeyboardInterrupt`` (not an :class:`InfoshapeError`). The run's store is
    closed with status ``"interrupted"``.

    Attributes:
        epochs_kept: the number of complete epochs in the store and its checkpoint.
        store: the store's path, or None when the run wrote none.
    """

    def __init__(self, problem: str, *, epochs_kept: int, store: str | None, fix: str) -> None:
        self.epochs_kept, self.store, self.problem, self.fix = epochs_kept, store, problem, fix
        super().__init__(_message(problem, expected=None, got=None, fix=fix))


class StoreError(_Explained):
    """A store cannot be created, opened or appended to."""


class StoreWriteError(StoreError):
    """The background writer failed (disk full, permissions); the committed part stays readable."""


class DatasetNotFoundError(_Explained, FileNotFoundError):
    """A data set needs files that are not under the given root."""


class InfoshapeWarning(UserWarning):
    """Base class of every infoshape warning."""


class EstimatorAssumptionWarning(InfoshapeWarning):
    """An estimate holds only under an assumption that the data break.

    Raised with :func:`warnings.warn` by an estimator; the value is still returned (capped
    where the warning says so). ``infoshape analyze`` records the conditions per
    ``(epoch, tap)`` in the analysis group (``assumption_flags``) and the report marks them.

    Attributes:
        estimator: the estimator's registry name (``"gaussian"``).
        condition: a short code: one of ``ASSUMPTION_CONDITIONS`` for the built-in
            estimators (a third-party estimator may add its own).
    """

    def __init__(
        self,
        estimator: str,
        condition: str,
        problem: str,
        *,
        expected: str | None = None,
        got: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.estimator, self.condition = estimator, condition
        self.problem, self.expected, self.got, self.fix = problem, expected, got, fix
        text = _message(
            f"{estimator}: {problem} [{condition}]", expected=expected, got=got, fix=fix
        )
        super().__init__(text)


#: the ``condition`` codes of :class:`EstimatorAssumptionWarning` and what each means.
ASSUMPTION_CONDITIONS = {
    "ridge_dominated": "a covariance is (near) singular, so the ridge, not the data, sets the "
    "log-determinant (a deterministic layer, fewer samples than dimensions, overall or in a class)",
    "exceeds_h_y": "the raw estimate of I(T;Y) exceeded H(Y), the plug-in entropy of the labels; "
    "the value reported is capped at H(Y)",
    "saturated": "I(X;T) is at log N: every sample is told apart, so I(X;T) = log N and "
    "I(T;Y) = H(Y) hold trivially and say nothing about the layer",
}
