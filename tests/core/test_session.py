"""The Session: loss composition, hooks order and arguments, metrics, closing."""

from __future__ import annotations

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infoshape
from infoshape import NonFiniteError, Penalty, PluginHookError, Tap, hookimpl


class RecordingSink:
    def __init__(self):
        self.rows = []
        self.closed = False

    def write(self, stage, index, metrics):
        self.rows.append((stage, index, dict(metrics)))

    def close(self):
        self.closed = True


class L2OfHidden:
    """Penalty: mean squared activation of relu1, weight from options."""

    name = "l2_hidden"

    @attrs.frozen(kw_only=True)
    class Config:
        weight: float = 0.5

    def __init__(self):
        self.steps_seen = 0
        self.epochs_seen = []

    @hookimpl
    def infoshape_configure(self, config):
        self.config = config

    @hookimpl
    def infoshape_taps(self, session):
        self.tap = Tap("relu1")
        return [self.tap]

    @hookimpl
    def infoshape_penalty(self, session, captures):
        (name,) = session.capture_names(self.tap)
        return [Penalty("l2_hidden", captures[name].pow(2).mean(), self.config.weight)]

    @hookimpl
    def infoshape_metrics(self, captures, outputs, targets, stage):
        if stage == "epoch" and outputs is not None:
            accuracy = (outputs.argmax(1) == targets).float().mean()
            return {"probe.accuracy": accuracy, "relu1.mean": captures["relu1"].mean(1)}
        return {f"{stage}.seen": 1.0}

    @hookimpl
    def infoshape_step_end(self, step):
        self.steps_seen += 1

    @hookimpl
    def infoshape_epoch_end(self, epoch):
        self.epochs_seen.append(epoch)


def test_loss_is_objective_plus_weighted_penalties(mlp, batch):
    x, y = batch
    sink = RecordingSink()
    with infoshape.Session(
        mlp, plugins=[L2OfHidden], options={"l2_hidden": {"weight": 0.25}}, sinks=[sink]
    ) as s:
        out = s.model(x)
        loss = s.loss(out, y)
        hidden = F.relu(mlp.fc1(x))
        expected = F.cross_entropy(out, y) + 0.25 * hidden.pow(2).mean()
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
        loss.backward()
        assert mlp.fc1.weight.grad is not None
        s.step_end()
    stage, index, metrics = sink.rows[0]
    assert (stage, index) == ("step", 0)
    assert metrics["penalty.l2_hidden"] == pytest.approx(
        float(hidden.pow(2).mean().detach()), rel=1e-6
    )
    assert metrics["loss"] == pytest.approx(float(expected.detach()), rel=1e-6)
    assert metrics["loss.objective"] == pytest.approx(
        float(F.cross_entropy(out, y).detach()), rel=1e-6
    )
    assert metrics["step.seen"] == 1.0
    assert sink.closed


def test_epoch_end_with_and_without_probe(mlp, batch):
    x, y = batch
    sink = RecordingSink()
    with infoshape.Session(mlp, plugins=[L2OfHidden], sinks=[sink]) as s:
        plugin = s.plugins["l2_hidden"].plugin
        without = s.epoch_end()
        with_probe = s.epoch_end(probe=(x, y))
        assert plugin.epochs_seen == [0, 1]
    assert without == {"epoch.seen": 1.0}
    with torch.no_grad():
        expected_accuracy = float((mlp(x).argmax(1) == y).float().mean())
    assert float(with_probe["probe.accuracy"]) == pytest.approx(expected_accuracy)
    epoch_rows = [r for r in sink.rows if r[0] == "epoch"]
    assert [r[1] for r in epoch_rows] == [0, 1]
    assert epoch_rows[1][2]["relu1.mean"].shape == (32,)


def test_probe_pass_restores_training_mode_and_batches(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=[L2OfHidden], probe_batch_size=5) as s:
        mlp.train()
        metrics = s.epoch_end(probe=(x, y))
        assert mlp.training
    assert metrics["relu1.mean"].shape == (32,)


def test_two_sessions_keep_separate_plugin_state(batch, make_mlp):
    x, y = batch
    a, b = make_mlp(0), make_mlp(1)
    with (
        infoshape.Session(a, plugins=[L2OfHidden]) as sa,
        infoshape.Session(b, plugins=[L2OfHidden]) as sb,
    ):
        for _ in range(3):
            sa.loss(sa.model(x), y)
            sa.step_end()
        sb.loss(sb.model(x), y)
        sb.step_end()
        assert sa.plugins["l2_hidden"].plugin.steps_seen == 3
        assert sb.plugins["l2_hidden"].plugin.steps_seen == 1
        assert sa.step == 3 and sb.step == 1


class HalfCE:
    name = "half_ce"

    @hookimpl
    def infoshape_objective(self, outputs, targets):
        return 0.5 * F.cross_entropy(outputs, targets)


def test_objective_hook_replaces_cross_entropy(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=[HalfCE]) as s:
        out = s.model(x)
        torch.testing.assert_close(s.loss(out, y), 0.5 * F.cross_entropy(out, y))


class Doubler(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


class WrapTwice:
    name = "wrap"

    @hookimpl
    def infoshape_wrap_model(self, model):
        return Doubler(model)


class WrapAgain:
    name = "wrap_again"

    @hookimpl
    def infoshape_wrap_model(self, model):
        assert isinstance(model, Doubler)  # receives the previous plugin's result
        return Doubler(model)

    @hookimpl
    def infoshape_taps(self):
        return [Tap("inner.inner.fc1")]


def test_wrap_model_chains_and_taps_see_the_wrapped_model(mlp, batch):
    x, _ = batch
    with infoshape.Session(mlp, plugins=[WrapTwice, WrapAgain]) as s:
        assert isinstance(s.model, Doubler) and isinstance(s.model.inner, Doubler)
        torch.testing.assert_close(s.model(x), 4 * mlp(x))
        assert "inner.inner.fc1" in s.captures


class Raises:
    name = "raises"

    @hookimpl
    def infoshape_penalty(self, captures):
        raise ZeroDivisionError("oops")


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_plugin_error_names_plugin_and_hook_and_removes_hooks(mlp, batch):
    x, y = batch
    with pytest.raises(PluginHookError) as info:
        with infoshape.Session(mlp, plugins=[Raises], taps=[Tap("fc1")]) as s:
            s.loss(s.model(x), y)
    assert "plugin 'raises' in hook infoshape_penalty: raised ZeroDivisionError: oops" in str(
        info.value
    )
    assert _hook_count(mlp) == 0


class NanPenalty:
    name = "nan_penalty"

    @hookimpl
    def infoshape_penalty(self, outputs):
        return [Penalty("bad", outputs.sum() * float("nan"))]


def test_nonfinite_penalty_names_the_penalty_and_step(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=[NanPenalty], check_every=1) as s:
        with pytest.raises(NonFiniteError, match=r"loss is not finite at step 0 .*penalty\.bad"):
            s.loss(s.model(x), y)


class NotAScalar:
    name = "not_scalar"

    @hookimpl
    def infoshape_penalty(self, outputs):
        return [Penalty("vec", outputs.sum(0))]


def test_non_scalar_penalty_is_refused(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=[NotAScalar]) as s:
        with pytest.raises(PluginHookError, match="penalty 'vec' is not a scalar"):
            s.loss(s.model(x), y)


class WrongTaps:
    name = "wrong_taps"

    @hookimpl
    def infoshape_taps(self):
        return ["fc1"]


def test_wrong_return_type_from_taps(mlp):
    with pytest.raises(PluginHookError, match="expected: a list of Tap"):
        infoshape.Session(mlp, plugins=[WrongTaps])
    assert _hook_count(mlp) == 0


class EndRecorder:
    name = "end_recorder"
    ended = 0

    @hookimpl
    def infoshape_session_end(self, session):
        type(self).ended += 1


def test_session_end_runs_on_exception_and_close_is_idempotent(mlp):
    EndRecorder.ended = 0
    with pytest.raises(KeyError), infoshape.Session(mlp, plugins=[EndRecorder]) as s:
        raise KeyError("user error")
    s.close()
    assert EndRecorder.ended == 1
    with pytest.raises(infoshape.InfoshapeError, match="session is closed"):
        s.step_end()


def test_session_without_plugins_is_plain_cross_entropy(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp) as s:
        out = s.model(x)
        torch.testing.assert_close(s.loss(out, y), F.cross_entropy(out, y))
        assert s.model is mlp


class CountingState:
    """A plugin whose only state is a step counter, saved and restored by the state hooks."""

    name = "counting_state"

    def __init__(self):
        self.count = 0

    @hookimpl
    def infoshape_step_end(self):
        self.count += 1

    @hookimpl
    def infoshape_state_dict(self):
        return {"count": self.count}

    @hookimpl
    def infoshape_load_state_dict(self, state):
        self.count = state["count"]


def _run_steps(session, x, y, n):
    for _ in range(n):
        session.loss(session.model(x), y).backward()
        session.step_end()


def test_state_dict_round_trip_restores_plugins_and_counters(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=[CountingState]) as s:
        _run_steps(s, x, y, 3)
        s.epoch_end()
        state = s.state_dict()
    assert state == {"step": 3, "epoch": 1, "plugins": {"counting_state": {"count": 3}}}
    with infoshape.Session(mlp, plugins=[CountingState]) as resumed:
        resumed.load_state_dict(state)
        _run_steps(resumed, x, y, 1)
        assert resumed.plugins["counting_state"].plugin.count == 4
        assert (resumed.step, resumed.epoch) == (4, 1)


def test_load_state_dict_of_a_plugin_not_enabled_names_it(mlp):
    state = {"step": 1, "epoch": 0, "plugins": {"counting_state": {"count": 1}}}
    with (
        infoshape.Session(mlp, plugins=[L2OfHidden]) as s,
        pytest.raises(infoshape.PluginLoadError, match=r"counting_state.*not enabled"),
    ):
        s.load_state_dict(state)


def test_logged_metrics_join_the_row_of_their_step_and_epoch(mlp, batch):
    x, y = batch
    sink = RecordingSink()
    with infoshape.Session(mlp, plugins=[L2OfHidden], sinks=[sink]) as s:
        s.loss(s.model(x), y).backward()
        s.log_metrics({"user.step": 2.0}, stage="step")
        s.step_end()
        s.log_metrics({"test.accuracy": 0.5}, stage="epoch")
        s.epoch_end()
        s.log_metrics({"final.accuracy": 0.75})  # after the last epoch_end: written at close
    assert [(stage, index) for stage, index, _ in sink.rows] == [
        ("step", 0),
        ("epoch", 0),
        ("epoch", 1),
    ]
    assert sink.rows[0][2]["user.step"] == 2.0 and "loss" in sink.rows[0][2]
    assert sink.rows[1][2] == {"test.accuracy": 0.5, "epoch.seen": 1.0}
    assert sink.rows[2][2] == {"final.accuracy": 0.75}


def test_log_metrics_with_an_unknown_stage_says_which_exist(mlp):
    with (
        infoshape.Session(mlp) as s,
        pytest.raises(infoshape.ConfigError, match="unknown metric stage"),
    ):
        s.log_metrics({"a": 1.0}, stage="batch")
