"""infoshape.testing: strategies keep their guarantees; PluginTester passes and fails plugins."""

from __future__ import annotations

import os
import sys
import textwrap
import types

import attrs
import pytest
import torch
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import infoshape
from infoshape import ConfigError, Penalty, Tap, hookimpl
from infoshape.testing import (
    CheckReport,
    PluginTester,
    activations,
    activations_and_labels,
    labels,
    small_mlp,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = st.tuples(st.integers(0, 20), st.integers(1, 6))
CONV_SHAPES = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))


# ----------------------------------------------------------------- strategies
@FAST
@given(st.data())
def test_activations_respect_shape_dtype_and_range(data):
    shape = data.draw(st.one_of(SHAPES, CONV_SHAPES))
    dtype = data.draw(st.sampled_from([torch.float16, torch.float32, torch.float64]))
    lo = data.draw(st.floats(-5, 0))
    hi = data.draw(st.floats(0, 5))
    x = data.draw(activations(shape=shape, dtype=dtype, min_value=lo, max_value=hi))
    assert isinstance(x, torch.Tensor)
    assert tuple(x.shape) == shape and x.dtype == dtype
    assert bool(torch.isfinite(x).all())
    if x.numel():
        assert float(x.min()) >= lo and float(x.max()) <= hi


@FAST
@given(activations(shape=st.one_of(SHAPES, CONV_SHAPES), nonnegative=True, min_value=-3))
def test_nonnegative_activations(x):
    assert bool((x >= 0).all())


@FAST
@given(activations(shape=(4, 3), dtype=torch.bfloat16, max_value=2.0))
def test_bfloat16_is_drawn_as_float32_and_cast(x):
    assert x.dtype == torch.bfloat16 and bool(torch.isfinite(x).all())


def test_nonfinite_values_only_when_allowed():
    found = find(
        activations(shape=(3, 2), allow_nonfinite=True, nonnegative=True),
        lambda t: bool(torch.isnan(t).any()) and bool(torch.isinf(t).any()),
        settings=settings(database=None, max_examples=2000),
    )
    assert not bool((found[torch.isinf(found)] < 0).any())  # nonnegative: +inf only


@FAST
@given(st.integers(3, 30), st.integers(1, 3), st.data())
def test_labels_all_contains_every_class(n, n_classes, data):
    y = data.draw(labels(n, n_classes, classes="all"))
    assert y.dtype == torch.int64 and tuple(y.shape) == (n,)
    assert set(y.tolist()) == set(range(n_classes))


@FAST
@given(st.integers(0, 30), st.integers(2, 6), st.data())
def test_labels_absent_misses_a_class(n, n_classes, data):
    y = data.draw(labels(n, n_classes, classes="absent"))
    assert y.dtype == torch.int64 and tuple(y.shape) == (n,)
    assert set(y.tolist()) < set(range(n_classes))


@FAST
@given(labels(st.integers(0, 25), 4))
def test_labels_any_in_range_with_strategy_n(y):
    assert y.ndim == 1 and y.dtype == torch.int64
    assert all(0 <= v < 4 for v in y.tolist())


@FAST
@given(labels(st.integers(0, 10), 5, classes="all"))
def test_labels_all_with_strategy_n_skips_too_few(y):
    assert len(y) >= 5 and set(y.tolist()) == set(range(5))


@FAST
@given(activations_and_labels(shape=st.one_of(SHAPES, CONV_SHAPES), n_classes=3, classes="all"))
def test_activations_and_labels_pair_same_n(pair):
    x, y = pair
    assert x.shape[0] == y.shape[0] >= 3
    assert set(y.tolist()) == {0, 1, 2}


@FAST
@given(activations_and_labels((12, 4), n_classes=4, classes="absent", nonnegative=True))
def test_activations_and_labels_pass_options(pair):
    x, y = pair
    assert bool((x >= 0).all()) and len(set(y.tolist())) < 4


def test_strategies_are_reproducible_under_hypothesis():
    def draws():
        seen = []

        @settings(derandomize=True, database=None, max_examples=15)
        @given(activations_and_labels(SHAPES, n_classes=2))
        def collect(pair):
            seen.append((pair[0].numpy().tobytes(), tuple(pair[0].shape), pair[1].tolist()))

        collect()
        return seen

    assert draws() == draws()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: labels(2, 3, classes="all"), "at least one sample per class"),
        (lambda: labels(5, 1, classes="absent"), "n_classes is too small"),
        (lambda: labels(5, 3, classes="some"), "unknown classes"),
        (lambda: activations(dtype=torch.int64), "floating torch dtype"),
        (lambda: activations(min_value=1, max_value=0), "value range is empty"),
        (lambda: activations(max_value=-1, nonnegative=True), "value range is empty"),
        (lambda: activations(shape=(3, -1)), "shape"),
        (lambda: activations_and_labels((2, 4), n_classes=3, classes="all"), "per class"),
    ],
)
def test_bad_strategy_arguments_explain_the_fix(make, match):
    with pytest.raises(ConfigError, match=match) as info:
        make()
    assert "fix:" in str(info.value)


# -------------------------------------------------------------- plugins under test
class GoodPlugin:
    """Well behaved: state on the instance, penalty from captures, scalar and array metrics."""

    name = "good"

    @attrs.frozen(kw_only=True)
    class Config:
        weight: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
        layer: str = "relu1"
        widths: tuple[int, ...] = (1, 2)

    def __init__(self):
        self.steps = 0

    @hookimpl
    def infoshape_configure(self, config):
        self.config = config

    @hookimpl
    def infoshape_taps(self):
        self.tap = Tap(self.config.layer)
        return [self.tap]

    @hookimpl
    def infoshape_penalty(self, session, captures):
        (name,) = session.capture_names(self.tap)
        return [Penalty("good", captures[name].pow(2).mean(), self.config.weight)]

    @hookimpl
    def infoshape_metrics(self, session, captures, stage):
        (name,) = session.capture_names(self.tap)
        if name not in captures:
            return {}
        x = captures[name]
        return {"good.mean": float(x.mean()), "good.units": x.mean(0), "good.steps": self.steps}

    @hookimpl
    def infoshape_step_end(self):
        self.steps += 1


def make_module(monkeypatch, name: str, source: str) -> types.ModuleType:
    """A real module (in sys.modules) built from source, to test module-level state."""
    module = types.ModuleType(name)
    exec(textwrap.dedent(source), module.__dict__)
    monkeypatch.setitem(sys.modules, name, module)
    return module


HEADER = """
    import torch
    from infoshape import Penalty, Tap, hookimpl
"""


def test_well_behaved_plugin_passes_every_check(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    torch_state = torch.get_rng_state()
    PluginTester(GoodPlugin, options={"weight": 0.2, "widths": [3]}).check_all()
    assert torch.equal(torch.get_rng_state(), torch_state)  # global RNG restored
    assert os.listdir(tmp_path) == []  # sessions ran in a temporary folder


def test_stateless_module_plugin_and_user_model_pass(monkeypatch):
    module = make_module(
        monkeypatch,
        "stateless_plugin",
        HEADER
        + """
    @hookimpl
    def infoshape_taps():
        return [Tap("body.*", name="body")]

    @hookimpl
    def infoshape_metrics(captures):
        return {f"norm.{k}": float(v.norm()) for k, v in captures.items()}
    """,
    )
    model = torch.nn.Sequential()
    model.add_module("body", small_mlp((2, 3), n_classes=4))
    PluginTester(module, model=model, input_shape=(2, 3), n_classes=4).check_all()


def test_module_level_state_fails_naming_the_global(monkeypatch):
    module = make_module(
        monkeypatch,
        "stateful_plugin",
        HEADER
        + """
    _SEEN = []

    @hookimpl
    def infoshape_step_end(step):
        _SEEN.append(step)
    """,
    )
    with pytest.raises(AssertionError, match=r"stateful_plugin\._SEEN changed") as info:
        PluginTester(module).check_no_module_state()
    assert "module-level state" in str(info.value)


def test_class_attribute_state_fails_and_sessions_interfere(monkeypatch):
    module = make_module(
        monkeypatch,
        "leaky_plugin",
        HEADER
        + """
    class Leaky:
        history = []   # shared by every instance, so by every session

        @hookimpl
        def infoshape_step_end(self, step):
            self.history.append(step)

        @hookimpl
        def infoshape_metrics(self):
            return {"leaky.seen": len(self.history)}
    """,
    )
    tester = PluginTester(module.Leaky)
    with pytest.raises(AssertionError, match=r"leaky_plugin\.Leaky\.history changed"):
        tester.check_no_module_state()
    with pytest.raises(AssertionError, match=r"leaky\.seen is .* when run alone but"):
        tester.check_sessions_independent()


def test_entry_point_to_an_instance_shares_it_between_sessions(fake_distribution):
    fake_distribution(
        "shared-dist",
        {"shared": "shared_plugin:PLUGIN"},
        {
            "shared_plugin": """
            from infoshape import hookimpl

            class Shared:
                name = "shared"

                @hookimpl
                def infoshape_step_end(self, step):
                    self.last_step = step

            PLUGIN = Shared()
            """
        },
    )
    tester = PluginTester("shared")
    with pytest.raises(AssertionError, match="both sessions got the same plugin object"):
        tester.check_sessions_independent()
    with pytest.raises(AssertionError, match=r"shared_plugin\.PLUGIN changed"):
        tester.check_no_module_state()


class VectorPenalty:
    name = "vector"

    @hookimpl
    def infoshape_taps(self):
        return [Tap("fc1")]

    @hookimpl
    def infoshape_penalty(self, captures):
        return [Penalty("vec", captures["fc1"].pow(2).mean(dim=1))]


def test_non_scalar_penalty_fails_naming_the_penalty():
    with pytest.raises(AssertionError, match=r"penalty 'vec' has shape \(16,\)") as info:
        PluginTester(VectorPenalty).check_hook_types()
    assert "scalar" in str(info.value)


class StringTaps:
    name = "string_taps"

    @hookimpl
    def infoshape_taps(self):
        return "fc1"


def test_wrong_type_from_taps_fails_in_check_all_with_the_hook_named():
    with pytest.raises(AssertionError) as info:
        PluginTester(StringTaps).check_all()
    message = str(info.value)
    assert "check_hook_types" in message
    assert "infoshape_taps returned str 'fc1'; expected a list of Tap" in message
    assert "checks failed for plugin 'string_taps'" in message


class BadMetrics:
    name = "bad_metrics"

    @hookimpl
    def infoshape_metrics(self, stage):
        return {"bad.label": "high"} if stage == "step" else [("bad.epoch", 1.0)]


def test_metrics_of_wrong_kind_are_named():
    with pytest.raises(AssertionError) as info:
        PluginTester(BadMetrics).check_hook_types()
    message = str(info.value)
    assert "metric 'bad.label' is str" in message
    assert "infoshape_metrics (stage='epoch') returned list" in message


class LeavesHooks:
    name = "leaves_hooks"

    @hookimpl
    def infoshape_wrap_model(self, model):
        model.fc1.register_forward_hook(lambda *args: None)


def test_hooks_left_on_the_model_are_counted():
    with pytest.raises(AssertionError, match=r"fc1\._forward_hooks: 0 -> 1") as info:
        PluginTester(LeavesHooks).check_hooks_removed()
    assert "exception in the with block" in str(info.value)


class DetachedPenalty:
    name = "detached"

    @hookimpl
    def infoshape_taps(self):
        return [Tap("relu2")]

    @hookimpl
    def infoshape_penalty(self, captures):
        return [Penalty("frozen", captures["relu2"].detach().mean() + 1.0)]


def test_detached_penalty_breaks_the_gradient_check():
    with pytest.raises(AssertionError, match="penalty 'frozen' has no autograd graph"):
        PluginTester(DetachedPenalty).check_gradient()


class DetachedObjective:
    name = "detached_objective"

    @hookimpl
    def infoshape_objective(self, outputs, targets):
        return torch.nn.functional.cross_entropy(outputs, targets).detach()


def test_detached_objective_breaks_the_gradient_check():
    with pytest.raises(AssertionError, match="the loss has no autograd graph"):
        PluginTester(DetachedObjective).check_gradient()


class Unmarked:
    name = "unmarked"

    @hookimpl
    def infoshape_step_end(self):
        pass

    def infoshape_taps(self):  # the @hookimpl is missing
        return [Tap("fc1")]


def test_hook_without_marker_fails_loading():
    with pytest.raises(AssertionError, match=r"infoshape_taps lack\(s\) @infoshape.hookimpl"):
        PluginTester(Unmarked).check_loads()


def test_plugin_that_does_not_load_is_reported():
    with pytest.raises(AssertionError, match="does not load"):
        PluginTester("no_such_plugin_installed").check_loads()


class UnserializableConfig:
    name = "unserializable"

    @attrs.frozen(kw_only=True)
    class Config:
        activation: type = torch.nn.ReLU

    @hookimpl
    def infoshape_configure(self, config):
        self.config = config


class MutableConfig(UnserializableConfig):
    name = "mutable"

    @attrs.define(kw_only=True)
    class Config:
        beta: float = 1.0


def test_config_must_be_frozen_and_json_serializable():
    with pytest.raises(AssertionError, match=r"option 'activation' = .* does not serialize"):
        PluginTester(UnserializableConfig).check_config()
    with pytest.raises(AssertionError, match="Config is mutable"):
        PluginTester(MutableConfig).check_config()


def test_bad_tester_arguments():
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        PluginTester(GoodPlugin, batch_size=0)


def test_small_mlp_names_and_shapes():
    model = small_mlp((1, 4, 4), n_classes=5)
    names = [n for n, _ in model.named_children()]
    assert names == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 5)
    assert next(n for n, _ in small_mlp().named_children()) == "fc1"


def test_testing_exports_are_documented():
    import infoshape.testing as testing

    for name in testing.__all__:
        assert getattr(testing, name).__doc__, name
    assert infoshape.testing is testing


class RegistryHooks:
    name = "registry_hooks"

    @hookimpl
    def infoshape_estimators(self):
        return [infoshape.Estimator(name="mean", function=torch.mean)]

    @hookimpl
    def infoshape_datasets(self):
        return {"name": "not a DatasetSpec"}


def test_registry_hooks_are_checked_too():
    with pytest.raises(AssertionError) as info:
        PluginTester(RegistryHooks).check_hook_types()
    message = str(info.value)
    assert "infoshape_datasets returned dict" in message
    assert "expected a list of DatasetSpec" in message
    assert "infoshape_estimators" not in message  # a list of Estimator is right


# ----------------------------------------------------------------- check_all's report
def test_check_all_returns_and_prints_a_report(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    report = PluginTester(GoodPlugin, options={"weight": 0.2, "widths": [3]}).check_all()
    assert isinstance(report, CheckReport) and report.ok and report.plugin == "good"
    assert [r.name for r in report.results] == list(PluginTester.checks)
    assert all(r.passed and r.reason == "" and r.duration_s >= 0 for r in report.results)
    assert report.duration_s == pytest.approx(sum(r.duration_s for r in report.results))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "PluginTester 'good': 7 checks"
    assert [line.split()[:2] for line in printed[1:-1]] == [
        ["PASS", name] for name in PluginTester.checks
    ]
    assert printed[-1].startswith("7 checks: 7 passed, 0 skipped, 0 failed in ")


def test_a_check_without_a_subject_is_skipped_with_its_reason(capsys):
    report = PluginTester(StringTaps).check_all(raise_on_failure=False, echo=False)
    assert capsys.readouterr().out == ""  # echo=False prints nothing
    config = report["check_config"]
    assert config.skipped and "no Config" in config.reason
    failed = [r.name for r in report.failures]
    assert not report.ok and "check_hook_types" in failed and "check_loads" not in failed
    assert "infoshape_taps returned str 'fc1'" in report["check_hook_types"].reason
    assert report.count("skipped") == 1 and report.count("failed") == len(failed)
    assert report.count("passed") == len(PluginTester.checks) - 1 - len(failed)
    summary = report.summary()
    assert "SKIP  check_config" in summary and "FAIL  check_hook_types" in summary
    assert "PASS  check_loads" in summary
    assert summary.splitlines()[-1].startswith(
        f"7 checks: {6 - len(failed)} passed, 1 skipped, {len(failed)} failed"
    )
    with pytest.raises(KeyError, match="no check 'check_nothing'"):
        report["check_nothing"]


def test_check_all_prints_the_summary_before_raising(capsys):
    with pytest.raises(AssertionError, match="of 7 conformance checks failed"):
        PluginTester(StringTaps).check_all()
    assert "FAIL  check_hook_types" in capsys.readouterr().out
