"""The builtin_datasets plugin registers the four data sets with their shapes."""

from __future__ import annotations

import pytest

import infoshape
from infoshape.testing import PluginTester

EXPECTED = {
    "digits": ((1, 8, 8), False),
    "mnist": ((1, 28, 28), True),
    "fashion_mnist": ((1, 28, 28), True),
    "cifar10": ((3, 32, 32), True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_specs(name):
    spec = infoshape.get_dataset(name)
    assert (spec.input_shape, spec.needs_root) == EXPECTED[name]
    assert spec.n_classes == 10 and spec.description and callable(spec.load)


def test_listed_by_the_registry():
    assert set(EXPECTED) <= {spec.name for spec in infoshape.list_datasets()}


def test_digits_loads_without_root():
    spec = infoshape.get_dataset("digits")
    x, y = spec.load("train", None)[0]
    assert tuple(x.shape) == spec.input_shape and 0 <= int(y) < spec.n_classes


def test_unknown_data_set_names_the_known_ones():
    with pytest.raises(infoshape.UnknownNameError, match="did you mean 'mnist'") as info:
        infoshape.get_dataset("mnsit")
    assert "digits" in str(info.value)


def test_conformance():
    PluginTester("builtin_datasets").check_all()
