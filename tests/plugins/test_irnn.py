"""The irnn plugin: hand-computed penalties, the ℓ1 schedule, closed forms of the estimators.

Every expected number is written out below from the toy's entries, not produced by the code
under test. Tolerances: 1e-12 for float64 estimators, 1e-6 for float32 penalties and gradients.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import infoshape
from infoshape.errors import CaptureError, ConfigError, PluginHookError
from infoshape.plugins.irnn import (
    IRNN,
    IRNNConfig,
    constrain,
    find_classifier,
    information_x_yhat,
    information_y_yhat,
    logit_penalty,
    weight_sparsity,
)
from infoshape.testing import PluginTester
from infoshape.testing.conformance import RecordingSink

# The 3-class toy: W rows w_0 = (3, 4), w_1 = (0, 1), w_2 = (1, 0): norms 5, 1, 1;
# features F_0 = (3, 4), F_1 = (1, 0), F_2 = (0, 2): norms 5, 1, 2; labels 0, 2, 1.
W = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
F = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
Y = torch.tensor([0, 2, 1])
LOGIT = (5 * 5 + 1 * 1 + 1 * 2) / 3  # mean_k ‖w_{y_k}‖·‖F_k‖ = 28/3
L1 = 3 + 4 + 0 + 1 + 1 + 0  # ‖W‖₁ = 9
FROBENIUS_SQ = 9 + 16 + 0 + 1 + 1 + 0  # ‖W‖² = 27


def toy_model() -> nn.Module:
    """``feat`` (identity, so F(x) = x) then ``out`` = the toy W with zero bias."""
    model = nn.Sequential(OrderedDict(feat=nn.Identity(), out=nn.Linear(2, 3)))
    with torch.no_grad():
        model.out.weight.copy_(W)
        model.out.bias.zero_()
    return model


def run_steps(options: dict, steps: int, lr: float = 0.0, batch_metrics: bool = False):
    """Train the toy for ``steps`` SGD steps on (F, Y); return the step metric rows."""
    sink = RecordingSink()
    model = toy_model()
    opts = {"irnn": {**options, "batch_metrics": batch_metrics}}
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with infoshape.Session(model, plugins=["irnn"], options=opts, sinks=[sink]) as s:
        for _ in range(steps):
            opt.zero_grad()
            s.loss(s.model(F), Y).backward()
            opt.step()
            s.step_end()
    return [m for stage, _, m in sink.rows if stage == "step"], model


# ------------------------------------------------------------------ the penalty
def test_logit_penalty_equals_the_hand_computation():
    assert float(logit_penalty(W, F, Y)) == pytest.approx(28 / 3, abs=1e-6)


def test_session_loss_is_cross_entropy_plus_weighted_penalties():
    rows, _ = run_steps({"alpha1": 1e-4, "alpha2": 0.01}, steps=1)
    m = rows[0]
    assert m["penalty.irnn.logit"] == pytest.approx(LOGIT, abs=1e-5)
    assert m["penalty.irnn.l1"] == pytest.approx(L1, abs=1e-6)  # step 0 is scheduled
    # logits F·Wᵀ: (25, 4, 3), (3, 0, 1), (8, 2, 0); labels 0, 2, 1
    ce = (
        -(25 - math.log(math.exp(25) + math.exp(4) + math.exp(3)))
        - (1 - math.log(math.exp(3) + 1 + math.exp(1)))
        - (2 - math.log(math.exp(8) + math.exp(2) + 1))
    ) / 3
    assert m["loss.objective"] == pytest.approx(ce, rel=1e-6)
    assert m["loss"] == pytest.approx(ce + 0.01 * 28 / 3 + 1e-4 * 9, rel=1e-6)


def test_l1_only_on_scheduled_steps():
    rows, _ = run_steps({"l1_every": 3, "alpha1": 0.01}, steps=8, lr=0.05)
    assert [k for k, m in enumerate(rows) if "penalty.irnn.l1" in m] == [0, 3, 6]
    assert all("penalty.irnn.logit" in m for m in rows)  # the α₂ term at every step


def test_l1_value_and_its_weight_on_a_scheduled_step():
    rows, _ = run_steps({"l1_every": 2, "alpha1": 0.5, "alpha2": 0.0}, steps=3, lr=0.0)
    assert [k for k, m in enumerate(rows) if "penalty.irnn.l1" in m] == [0, 2]
    assert rows[2]["loss"] - rows[2]["loss.objective"] == pytest.approx(0.5 * 9, rel=1e-6)
    assert rows[1]["loss"] == rows[1]["loss.objective"]  # α₂ = 0, step 1 unscheduled


@pytest.mark.parametrize("mode", ["naive", "l2_logit"])
def test_naive_mode_is_alpha2_times_squared_frobenius_norm(mode):
    rows, _ = run_steps({"mode": mode, "alpha1": 0.0, "alpha2": 0.1}, steps=1)
    m = rows[0]
    assert set(k for k in m if k.startswith("penalty.")) == {"penalty.irnn.naive"}
    assert m["penalty.irnn.naive"] == pytest.approx(FROBENIUS_SQ, abs=1e-5)
    assert m["loss"] - m["loss.objective"] == pytest.approx(0.1 * 27, rel=1e-5)
    assert IRNNConfig(mode="l2_logit").mode == "naive"


def test_gradients_reach_w_and_the_features():
    w, f = W.clone().requires_grad_(), F.clone().requires_grad_()
    logit_penalty(w, f, Y).backward()
    # d/dF_k = (1/3)·‖w_{y_k}‖·F_k/‖F_k‖; d/dw_c = (1/3)·Σ_{k: y_k = c} ‖F_k‖·w_c/‖w_c‖
    assert torch.allclose(f.grad, torch.tensor([[1.0, 4 / 3], [1 / 3, 0.0], [0.0, 1 / 3]]))
    assert torch.allclose(w.grad, torch.tensor([[1.0, 4 / 3], [0.0, 2 / 3], [1 / 3, 0.0]]))


def test_penalty_gradient_reaches_layers_before_the_classifier(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=["irnn"], options={"irnn": {"alpha1": 0.0}}) as s:
        out = s.model(x)
        s.loss(out, y)
        features = s.captures["out_pre"]
        logit_penalty(mlp.out.weight, features, y).backward()
    assert mlp.fc1.weight.grad is not None and float(mlp.fc1.weight.grad.abs().sum()) > 0
    assert float(mlp.out.weight.grad.abs().sum()) > 0


def test_zero_features_give_zero_gradient_not_nan():
    f = torch.zeros(2, 2, requires_grad=True)
    logit_penalty(W, f, torch.tensor([0, 1])).backward()
    assert torch.equal(f.grad, torch.zeros(2, 2))


# ------------------------------------------------------------------ the estimators
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [0, 0, 0, 1, 2, 3, 3]])
def test_perfect_classifier_has_both_informations_log_c(labels):
    y = torch.tensor(labels)
    p = torch.eye(4, dtype=torch.float64)[y]
    assert float(information_x_yhat(p)) == pytest.approx(math.log(4), abs=1e-12)
    assert float(information_y_yhat(p, y, 4)) == pytest.approx(math.log(4), abs=1e-12)
    assert constrain(p, y)["constrain"] == pytest.approx(0.0, abs=1e-12)


def test_uniform_constant_predictor_has_both_informations_zero():
    y = torch.tensor([0, 1, 2, 2, 1])
    p = torch.full((5, 3), 1 / 3, dtype=torch.float64)
    terms = constrain(p, y)
    assert terms["I_X_Yhat"] == pytest.approx(0.0, abs=1e-12)
    assert terms["I_Y_Yhat"] == pytest.approx(0.0, abs=1e-12)


def test_skewed_constant_predictor_uniform_prior_form():
    """p(ŷ|x) = q for every x: I(Y;Ŷ) = 0; the uniform-prior I(X;Ŷ) is KL(q‖uniform)."""
    y = torch.tensor([0, 1, 2, 0])
    p = torch.tensor([[0.5, 0.25, 0.25]] * 4, dtype=torch.float64)
    assert float(information_y_yhat(p, y)) == pytest.approx(0.0, abs=1e-12)
    expected = math.log(3) - 1.5 * math.log(2)  # log C − H(q), H(q) = 1.5 log 2
    assert float(information_x_yhat(p)) == pytest.approx(expected, abs=1e-12)


def test_estimators_on_a_hand_computed_binary_example():
    p = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    # π̂ row 0 = (1/(2·2))·(1.4, 0.6) = (0.35, 0.15); row 1 = (1/2)·(0.3, 0.7); marginals 1/2
    i_y = 0.7 * math.log(0.35 / 0.25) + 0.3 * math.log(0.15 / 0.25)
    i_x = (
        0.8 * math.log(1.6)
        + 0.2 * math.log(0.4)
        + 0.6 * math.log(1.2)
        + 0.4 * math.log(0.8)
        + 0.3 * math.log(0.6)
        + 0.7 * math.log(1.4)
    ) / 3
    terms = constrain(p, y)
    assert terms["I_Y_Yhat"] == pytest.approx(i_y, abs=1e-12)
    assert terms["I_X_Yhat"] == pytest.approx(i_x, abs=1e-12)
    assert terms["constrain"] == pytest.approx(i_x - i_y, abs=1e-12)


def test_absent_classes_leave_the_prior():
    y = torch.tensor([0, 1, 1])
    p = torch.eye(3, dtype=torch.float64)[y]  # class 2 never appears
    assert float(information_y_yhat(p, y)) == pytest.approx(math.log(2), abs=1e-12)


def test_weight_sparsity_counts_small_entries():
    w = torch.tensor([[0.0, 5e-4, -2e-3], [1.0, -9e-4, 0.5]])
    assert weight_sparsity(w) == pytest.approx(3 / 6)
    assert weight_sparsity(w, tol=1e-2) == pytest.approx(4 / 6)


# ------------------------------------------------------------------ the plugin
def test_epoch_metrics_on_the_probe_set():
    sink = RecordingSink()
    model = toy_model()
    with infoshape.Session(model, plugins=["irnn"], sinks=[sink]) as s:
        assert set(s.epoch_end()) == {"irnn.weight_norm", "irnn.sparsity"}  # no probe set
        metrics = s.epoch_end(probe=(F, Y))
    probs = torch.softmax((F @ W.T).double(), dim=1)
    assert metrics["irnn.constrain"] == pytest.approx(constrain(probs, Y)["constrain"], abs=1e-6)
    assert metrics["irnn.feature_norm"] == pytest.approx((5 + 1 + 2) / 3, abs=1e-6)
    assert metrics["irnn.weight_norm"] == pytest.approx((5 + 1 + 1) / 3, abs=1e-6)
    assert metrics["irnn.sparsity"] == pytest.approx(2 / 6)
    assert metrics["irnn.constrain"] == pytest.approx(
        metrics["irnn.I_X_Yhat"] - metrics["irnn.I_Y_Yhat"], abs=1e-12
    )


def test_batch_metrics_are_optional():
    assert not any(k.startswith("irnn.batch") for k in run_steps({}, steps=1)[0][0])
    rows, _ = run_steps({}, steps=1, batch_metrics=True)
    assert {"irnn.batch.constrain", "irnn.batch.I_X_Yhat", "irnn.batch.I_Y_Yhat"} <= set(rows[0])


def test_classifier_defaults_to_the_last_linear_and_can_be_named(mlp):
    assert find_classifier(mlp)[0] == "out"
    assert find_classifier(mlp, "fc2")[1] is mlp.fc2


@pytest.mark.parametrize(
    ("model", "options", "match"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), {}, "has no nn.Linear"),
        (None, {"classifier": "ou"}, "closest names: out"),
        (None, {"classifier": "relu1"}, "is not an nn.Linear"),
    ],
)
def test_errors_name_the_classifier_problem(mlp, model, options, match):
    with pytest.raises(PluginHookError, match=match) as err:
        infoshape.Session(model or mlp, plugins=["irnn"], options={"irnn": options})
    assert isinstance(err.value.__cause__, ConfigError)
    assert "fix:" in str(err.value.__cause__)


@pytest.mark.parametrize(
    "call",
    [
        lambda: logit_penalty(W, F, torch.tensor([0, 3, 1])),
        lambda: information_y_yhat(torch.eye(3)[[0, 1]], torch.tensor([0, -1])),
        lambda: logit_penalty(W, F, torch.tensor([0, 1])),
    ],
    ids=["label too large", "negative label", "label count"],
)
def test_label_errors(call):
    with pytest.raises(ConfigError, match=r"irnn: (a label is out of range|labels and samples)"):
        call()


def test_loss_without_a_forward_pass_names_the_missing_capture():
    with infoshape.Session(toy_model(), plugins=["irnn"]) as s:
        with pytest.raises(PluginHookError, match="not captured") as err:
            s.loss(torch.zeros(3, 3), Y)
    assert isinstance(err.value.__cause__, CaptureError)


def test_invalid_options_are_refused():
    with pytest.raises(infoshape.PluginLoadError):
        infoshape.Session(toy_model(), plugins=["irnn"], options={"irnn": {"mode": "l3"}})
    with pytest.raises(infoshape.PluginLoadError):
        infoshape.Session(toy_model(), plugins=["irnn"], options={"irnn": {"l1_every": 0}})


@pytest.mark.parametrize(
    "options",
    [{}, {"mode": "naive", "l1_every": 2, "batch_metrics": True}, {"classifier": "fc2"}],
    ids=["defaults", "naive", "named"],
)
def test_plugin_conformance(options):
    PluginTester(IRNN, options=options).check_all()
