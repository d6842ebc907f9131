"""Hypothesis strategies for the tensors plugins see (public, like ``xarray.testing.strategies``).

Exported by :mod:`infoshape.testing` together with the plugin conformance kit::

    from hypothesis import given
    from infoshape.testing import PluginTester, activations, activations_and_labels

    @given(activations(shape=(32, 8), nonnegative=True))
    def test_entropy_is_nonnegative(t): ...

    def test_conformance():
        PluginTester(MyPlugin, options={"beta": 0.1}).check_all()

Every strategy draws through hypothesis only, so examples are reproducible
(seeded by hypothesis) and shrink to small, simple tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from infoshape.errors import ConfigError

__all__ = ["activations", "activations_and_labels", "labels"]

Shape = tuple[int, ...]
Classes = Literal["all", "absent", "any"]

_NUMPY_DTYPE = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_WIDTH: dict[type, Literal[16, 32, 64]] = {np.float16: 16, np.float32: 32, np.float64: 64}


def _check_shape(shape: Any) -> Shape:
    ok = (
        isinstance(shape, Sequence)
        and len(shape) >= 1
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    )
    if not ok:
        raise ConfigError(
            "activations: shape is neither a shape nor a strategy of shapes",
            expected="a tuple of non-negative ints, samples first, e.g. (32, 8) or (16, 4, 5, 5)",
            got=repr(shape),
            fix="pass shape=(n, units) or a strategy such as st.tuples(st.integers(2, 64), ...)",
        )
    return tuple(shape)


def _shapes(shape: Shape | st.SearchStrategy[Shape]) -> st.SearchStrategy[Shape]:
    if isinstance(shape, st.SearchStrategy):
        return shape.map(_check_shape)
    return st.just(_check_shape(shape))


def _float_bounds(lo: float, hi: float, np_dtype: type) -> tuple[float, float]:
    """``[lo, hi]`` rounded inward to values ``np_dtype`` represents exactly."""
    info = np.finfo(np_dtype)
    lo_c = np_dtype(np.clip(lo, -info.max, info.max))
    hi_c = np_dtype(np.clip(hi, -info.max, info.max))
    if float(lo_c) < lo:
        lo_c = np.nextafter(lo_c, np_dtype(np.inf))
    if float(hi_c) > hi:
        hi_c = np.nextafter(hi_c, np_dtype(-np.inf))
    return float(lo_c), float(hi_c)


def _elements(
    np_dtype: type, lo: float, hi: float, allow_nonfinite: bool, nonnegative: bool
) -> st.SearchStrategy[float]:
    finite = st.floats(lo, hi, width=_WIDTH[np_dtype], allow_nan=False, allow_infinity=False)
    if not allow_nonfinite:
        return finite
    special = [np.nan, np.inf] if nonnegative else [np.nan, np.inf, -np.inf]
    return st.one_of(finite, st.sampled_from(special))


def activations(
    shape: Shape | st.SearchStrategy[Shape] = (16, 8),
    dtype: torch.dtype = torch.float32,
    min_value: float = -10.0,
    max_value: float = 10.0,
    allow_nonfinite: bool = False,
    nonnegative: bool = False,
) -> st.SearchStrategy[torch.Tensor]:
    """A strategy of activation tensors, samples along the first dimension.

    Args:
        shape: ``(n, units)``, ``(n, channels, h, w)`` ..., or a strategy of such tuples.
        dtype: a floating torch dtype (``bfloat16`` is drawn as float32 and cast).
        min_value: the smallest finite value (rounded inward to ``dtype``).
        max_value: the largest finite value (rounded inward to ``dtype``).
        allow_nonfinite: also draw NaN and ±Inf entries.
        nonnegative: only values ≥ 0 (post-ReLU activations); raises ``min_value`` to 0.

    Returns:
        a strategy of tensors of that shape and dtype, finite values in ``[min_value,
        max_value]``.

    Raises:
        ConfigError: for a non-floating dtype, an empty value range or a malformed shape.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            "activations: dtype must be a floating torch dtype",
            expected="torch.float16, torch.bfloat16, torch.float32 or torch.float64",
            got=repr(dtype),
            fix="draw float activations; cast them inside the test if needed",
        )
    lo = max(float(min_value), 0.0) if nonnegative else float(min_value)
    hi = float(max_value)
    if not lo <= hi:
        raise ConfigError(
            "activations: the value range is empty",
            expected="min_value <= max_value (and max_value >= 0 when nonnegative=True)",
            got=f"min_value={min_value}, max_value={max_value}, nonnegative={nonnegative}",
            fix="widen the range",
        )
    np_dtype = _NUMPY_DTYPE.get(dtype, np.float32)
    lo, hi = _float_bounds(lo, hi, np_dtype)
    elements = _elements(np_dtype, lo, hi, allow_nonfinite, nonnegative)
    arrays = _shapes(shape).flatmap(lambda s: hnp.arrays(np_dtype, s, elements=elements))
    return arrays.map(lambda a: torch.from_numpy(np.array(a, copy=True)).to(dtype))


def _check_classes(classes: Any, n_classes: Any) -> None:
    if classes not in ("all", "absent", "any"):
        raise ConfigError(
            "labels: unknown classes= value",
            expected='"all", "absent" or "any"',
            got=repr(classes),
            fix='classes="all" guarantees every class appears, "absent" that one is missing',
        )
    least = 2 if classes == "absent" else 1
    if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < least:
        raise ConfigError(
            "labels: n_classes is too small",
            expected=f"an int >= {least}" + (' with classes="absent"' if least == 2 else ""),
            got=repr(n_classes),
            fix="pass the number of classes of the task",
        )


def _too_few(n: int, n_classes: int) -> ConfigError:
    return ConfigError(
        'labels: classes="all" needs at least one sample per class',
        expected=f"n >= n_classes = {n_classes}",
        got=f"n = {n}",
        fix='draw more samples, or use classes="any"',
    )


@st.composite
def _labels(draw: st.DrawFn, n: int, n_classes: int, classes: Classes) -> torch.Tensor:
    if classes == "all":
        rest = draw(hnp.arrays(np.int64, n - n_classes, elements=st.integers(0, n_classes - 1)))
        values = np.concatenate([np.arange(n_classes, dtype=np.int64), rest])
        seed = draw(st.integers(0, 2**32 - 1))
        values = values[np.random.default_rng(seed).permutation(n)]
    elif classes == "absent":
        missing = draw(st.integers(0, n_classes - 1))
        values = draw(hnp.arrays(np.int64, n, elements=st.integers(0, n_classes - 2)))
        values = values + (values >= missing)
    else:
        values = draw(hnp.arrays(np.int64, n, elements=st.integers(0, n_classes - 1)))
    return torch.from_numpy(np.array(values, dtype=np.int64, copy=True))


def labels(
    n: int | st.SearchStrategy[int], n_classes: int, classes: Classes = "any"
) -> st.SearchStrategy[torch.Tensor]:
    """A strategy of class labels: ``int64`` tensors of shape ``(n,)`` in ``[0, n_classes)``.

    Args:
        n: number of samples, or a strategy of it.
        n_classes: number of classes.
        classes: ``"all"``: every class appears (needs ``n >= n_classes``); ``"absent"``: at
            least one class is missing; ``"any"``: no constraint.

    Raises:
        ConfigError: for an unknown ``classes``, too few classes, or ``classes="all"`` with
            fewer samples than classes.
    """
    _check_classes(classes, n_classes)
    if isinstance(n, st.SearchStrategy):
        sizes = n.filter(lambda k: k >= n_classes) if classes == "all" else n
        return sizes.flatmap(lambda k: _labels(k, n_classes, classes))
    if classes == "all" and n < n_classes:
        raise _too_few(n, n_classes)
    return _labels(n, n_classes, classes)


def activations_and_labels(
    shape: Shape | st.SearchStrategy[Shape] = (16, 8),
    n_classes: int = 3,
    classes: Classes = "any",
    **activation_options: Any,
) -> st.SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
    """A strategy of ``(activations, labels)`` pairs with the same number of samples.

    Args:
        shape: as for :func:`activations`; its first entry is the number of samples.
        n_classes: number of classes of the labels.
        classes: as for :func:`labels`; with ``"all"``, drawn shapes with fewer samples
            than classes are skipped.
        **activation_options: ``dtype``, ``min_value``, ``max_value``, ``allow_nonfinite``,
            ``nonnegative``, as for :func:`activations`.
    """
    _check_classes(classes, n_classes)
    shapes = _shapes(shape)
    if classes == "all":
        if not isinstance(shape, st.SearchStrategy) and _check_shape(shape)[0] < n_classes:
            raise _too_few(_check_shape(shape)[0], n_classes)
        shapes = shapes.filter(lambda s: s[0] >= n_classes)

    def pair(s: Shape) -> st.SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
        return st.tuples(activations(s, **activation_options), _labels(s[0], n_classes, classes))

    return shapes.flatmap(pair)
