"""The hook caller: calling order, wrappers refused, one table of return types, observers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import infoshape
from infoshape import Penalty, PluginHookError, PluginLoadError, Tap, hookimpl, hookspecs
from infoshape.hooks import HOOK_NAMES, Returns, return_types
from infoshape.hookspecs import MetricSink
from infoshape.objective import Penalty as PenaltyRecord
from infoshape.registry import DatasetSpec, Estimator


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _ordered(name, order, tryfirst=False, trylast=False):
    """A plugin class named ``name`` that appends its name to ``order`` in step_end."""

    @hookimpl(tryfirst=tryfirst, trylast=trylast)
    def infoshape_step_end(self):
        order.append(self.name)

    return type(name, (), {"name": name, "infoshape_step_end": infoshape_step_end})


def test_hooks_run_in_enabling_order_tryfirst_in_front_trylast_at_the_back():
    order: list[str] = []
    plugins = [
        _ordered("last_a", order, trylast=True),
        _ordered("plain_a", order),
        _ordered("first_a", order, tryfirst=True),
        _ordered("last_b", order, trylast=True),
        _ordered("plain_b", order),
        _ordered("first_b", order, tryfirst=True),
    ]
    with infoshape.Session(_model(), plugins=plugins) as s:
        s.step_end()
    # pluggy itself would call last-registered first (plain_b before plain_a)
    assert order == ["first_a", "first_b", "plain_a", "plain_b", "last_a", "last_b"]


@pytest.mark.parametrize("flag", ["wrapper", "hookwrapper"])
def test_a_hook_wrapper_is_refused_at_load_naming_plugin_and_hook(flag):
    class Wrapping:
        name = "wrapping"

        @hookimpl(**{flag: True})
        def infoshape_penalty(self):
            yield

    with pytest.raises(PluginLoadError) as info:
        infoshape.Session(_model(), plugins=[Wrapping])
    message = str(info.value)
    assert "plugin 'wrapping'" in message and "infoshape_penalty" in message
    assert f"{flag}=True" in message
    assert "wrappers are not supported" in message and "return a value instead" in message


def test_the_return_table_is_read_from_the_hookspec_annotations():
    table = return_types()
    assert set(table) == set(HOOK_NAMES) == {n for n in dir(hookspecs) if n[:10] == "infoshape_"}
    assert table["infoshape_taps"] == Returns("items", Tap)
    assert table["infoshape_penalty"] == Returns("items", PenaltyRecord)
    assert table["infoshape_sinks"] == Returns("items", MetricSink)
    assert table["infoshape_estimators"] == Returns("items", Estimator)
    assert table["infoshape_datasets"] == Returns("items", DatasetSpec)
    assert table["infoshape_metrics"] == Returns("mapping")
    assert table["infoshape_state_dict"] == Returns("mapping", None, optional=True)
    assert table["infoshape_wrap_model"] == Returns("value", nn.Module, optional=True)
    assert table["infoshape_objective"] == Returns("value", torch.Tensor, optional=True)
    assert table["infoshape_step_end"] == Returns("nothing")
    assert table["infoshape_wrap_model"].describe() == "an nn.Module or None"


class StateAsList:
    name = "state_as_list"

    @hookimpl
    def infoshape_state_dict(self):
        return [1, 2]


def test_a_result_of_the_wrong_type_names_the_declared_type():
    with infoshape.Session(_model(), plugins=[StateAsList]) as s:
        with pytest.raises(PluginHookError) as info:
            s.state_dict()
    message = str(info.value)
    assert "plugin 'state_as_list' in hook infoshape_state_dict" in message
    assert "expected: a dict of name to value or None" in message and "got: list" in message


class OneTap:
    name = "one_tap"

    @hookimpl
    def infoshape_taps(self):
        return Tap("0")  # one item, not a list: taken as a one-item list

    @hookimpl
    def infoshape_penalty(self, captures):
        return Penalty("one", captures["0"].pow(2).mean())


class Raises:
    name = "raises"

    @hookimpl
    def infoshape_step_end(self, step):
        raise ZeroDivisionError("boom")


def test_an_exception_in_a_hook_names_plugin_hook_and_cause_and_closes_the_session():
    s = infoshape.Session(_model(), plugins=[Raises])
    with pytest.raises(PluginHookError) as info:
        s.step_end()
    message = str(info.value)
    assert "plugin 'raises' in hook infoshape_step_end: raised ZeroDivisionError: boom" in message
    assert "at step 0, epoch 0" in message and "test_hooks.py" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert s.closed


def test_observers_see_every_call_with_its_arguments_and_result():
    seen: list[tuple[str, str, object]] = []

    def observer(plugin, hook, kwargs, result):
        seen.append((plugin, hook, result))
        assert "session" not in kwargs
        if hook == "infoshape_penalty":
            assert set(kwargs) == {"captures", "outputs", "targets"}

    def second(plugin, hook, kwargs, result):
        seen.append(("second", hook, None))

    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with infoshape.Session(_model(), plugins=[OneTap], observers=[observer]) as s:
        assert ("one_tap", "infoshape_taps", Tap("0")) in seen  # start hooks seen too
        stop = s.hooks.observe(second)
        s.loss(s.model(x), y)
        s.step_end()
        stop()
        s.loss(s.model(x), y)
        s.step_end()
    penalties = [r for p, h, r in seen if (p, h) == ("one_tap", "infoshape_penalty")]
    assert len(penalties) == 2 and isinstance(penalties[0], PenaltyRecord)  # as returned
    assert [h for p, h, _ in seen if p == "second"] == ["infoshape_penalty"]  # then stopped
