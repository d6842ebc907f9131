"""The option validators of :mod:`infoshape.options`: ConfigError naming the option, and the
plugin's PluginLoadError with the fix in the user's syntax."""

from __future__ import annotations

import attrs
import pytest
from torch import nn

import infoshape
from infoshape.errors import ConfigError, PluginLoadError
from infoshape.options import at_least, in_range, non_negative, one_of, positive, satisfies


@attrs.frozen(kw_only=True)
class _Config:
    rate: float = attrs.field(default=1.0, validator=positive())
    width: float | None = attrs.field(default=None, validator=positive(optional=True))
    beta: float = attrs.field(default=0.0, validator=non_negative())
    count: int = attrs.field(default=1, validator=at_least(1))
    decay: float = attrs.field(default=0.8, validator=in_range(0.0, 1.0, example=0.8))
    form: str = attrs.field(default="exp", validator=one_of("exp", "sigmoid"))
    pair: tuple = attrs.field(
        default=(0, 1), validator=satisfies(lambda v: v[0] < v[1], "(low, high) with low < high")
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("rate", 0.0, "rate: > 0"),
        ("width", -1.0, "width: None or > 0"),
        ("beta", -0.5, "beta: >= 0"),
        ("count", 0, "count: >= 1"),
        ("decay", 1.0, "decay: in [0.0, 1.0)"),
        ("form", "tanh", "form: one of 'exp', 'sigmoid'"),
        ("pair", (2, 1), "pair: (low, high) with low < high"),
    ],
)
def test_each_validator_raises_config_error_naming_the_option(option, value, expected):
    with pytest.raises(ConfigError) as info:
        _Config(**{option: value})
    err = info.value
    assert isinstance(err, ValueError)  # code catching attrs' ValueError keeps working
    assert f"option {option!r}" in err.problem
    assert err.expected == expected
    assert err.got == f"{option}={value!r}"
    assert err.fix


def test_valid_values_and_none_pass():
    config = _Config(rate=2.0, width=None, beta=0.0, count=3, decay=0.0, form="sigmoid")
    assert config.decay == 0.0 and config.width is None


def test_choice_keeps_the_not_one_of_wording():
    with pytest.raises(ConfigError, match="option 'form' is not one of 'exp', 'sigmoid'"):
        _Config(form="relu")


def test_in_range_bounds_follow_closed():
    @attrs.frozen
    class Closed:
        x: float = attrs.field(validator=in_range(0.0, 1.0, closed="[]"))

    assert Closed(1.0).x == 1.0
    with pytest.raises(ConfigError, match=r"in \[0.0, 1.0\]"):
        Closed(1.5)


class _Plugin:
    name = "validated"
    Config = _Config

    @infoshape.hookimpl
    def infoshape_configure(self, config):
        self.config = config


def test_build_config_turns_a_refusal_into_the_plugins_error_with_the_fix_in_python_syntax():
    with pytest.raises(PluginLoadError) as info:
        infoshape.Session(
            nn.Linear(2, 2), plugins=[_Plugin()], options={"validated": {"decay": 2.0}}
        )
    message = str(info.value)
    assert (
        "plugin 'validated': an option was refused: option 'decay' must be in [0.0, 1.0)" in message
    )
    assert "got: decay=2.0" in message
    assert 'options={"validated": {"decay": 0.8}}' in message


def test_build_config_reports_a_choice_as_not_one_of():
    with pytest.raises(PluginLoadError, match="option 'form' is not one of 'exp', 'sigmoid'"):
        infoshape.Session(
            nn.Linear(2, 2), plugins=[_Plugin()], options={"validated": {"form": "x"}}
        )


def test_shade_decay_refusal_reads_expected_got_fix():
    with pytest.raises(PluginLoadError) as info:
        infoshape.Session(
            nn.Sequential(nn.ReLU()), plugins=["shade"], options={"shade": {"decay": 1.0}}
        )
    message = str(info.value)
    assert "option 'decay' must be in [0.0, 1.0)" in message
    assert "expected: decay: in [0.0, 1.0)" in message and "got: decay=1.0" in message
