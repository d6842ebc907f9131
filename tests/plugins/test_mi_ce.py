"""The mi_ce plugin: eq. 7 at epoch 0, its gradient, the schedules, the kernel width, closed forms.

Tolerances: closed forms 1e-9 (float64 eigvalsh; off-cluster kernel entries ≤ e^-200);
gradcheck at its float64 defaults (eps 1e-6, atol 1e-5, rtol 1e-3); the saturation norm
against central finite differences (step 1e-6) to 1e-6 relative.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infoshape
from infoshape.errors import ConfigError, PluginHookError, PluginLoadError
from infoshape.plugins.mi_ce import (
    MICE,
    MICEConfig,
    alignment_curve,
    label_mi,
    mi_ce_loss,
    transition,
)
from infoshape.testing import PluginTester


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _plugin(**options) -> MICE:
    plugin = MICE()
    plugin.infoshape_configure(MICEConfig(**options))
    return plugin


# ------------------------------------------------------------------ the objective
def test_epoch_zero_objective_is_cross_entropy_exactly(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=["mi_ce"]) as session:
        out = session.model(x)
        loss = session.loss(out, y)
        assert torch.equal(loss, F.cross_entropy(out, y))
        loss.backward()
        session.step_end()
    logits = torch.randn(16, 3, generator=_gen(), dtype=torch.float64)
    labels = torch.arange(16) % 3
    assert torch.equal(mi_ce_loss(logits, labels, 1.0, None), F.cross_entropy(logits, labels))


class _Rows:
    """A metric sink keeping every (stage, index, metrics) row."""

    def __init__(self):
        self.rows = []

    def write(self, stage, index, metrics):
        self.rows.append((stage, index, dict(metrics)))

    def close(self):
        pass


def test_objective_at_a_later_epoch_is_eq_7(mlp, batch):
    """f(3) = 1/2: L = CE/2 − I/2, with the width the plugin chose on the previous epoch."""
    x, y = batch
    sink = _Rows()
    with infoshape.Session(mlp, plugins=["mi_ce"], sinks=[sink]) as session:
        session.loss(session.model(x), y)
        session.step_end()
        session.epoch_end()
        session.epoch = 3
        plugin = session.plugins["mi_ce"].plugin
        out = session.model(x)
        loss = session.loss(out, y).detach()
        sigma = plugin.width()
        with torch.no_grad():
            expected = 0.5 * F.cross_entropy(out, y) - 0.5 * label_mi(out.softmax(1), y, sigma)
        assert float(loss) == pytest.approx(float(expected), abs=1e-6)
        session.step_end()
    with torch.no_grad():
        mi = float(label_mi(out.softmax(1), y, sigma))
    steps = [metrics for stage, _, metrics in sink.rows if stage == "step"]
    assert "mi_ce.mi" not in steps[0]  # f(0) = 1: plain CE
    assert steps[1]["mi_ce.mi"] == pytest.approx(mi)


def test_gradient_matches_finite_differences():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    logits = torch.randn(10, 3, generator=_gen(1), dtype=torch.float64, requires_grad=True)
    f = transition(3)
    assert f == 0.5
    assert torch.autograd.gradcheck(lambda z: mi_ce_loss(z, labels, f, 0.4), (logits,))
    assert torch.autograd.gradcheck(lambda z: label_mi(z.softmax(1), labels, 0.25), (logits,))


def test_mixing_term_is_stable_on_degenerate_predictions():
    """All rows equal (an untrained net): eigenvalues of A_ŷ are {1, 0, ...}; gradient finite."""
    logits = torch.zeros(32, 4, dtype=torch.float64, requires_grad=True)
    loss = mi_ce_loss(logits, torch.arange(32) % 4, 0.5, 0.3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------ schedules
def test_schedules_by_hand():
    assert [transition(e) for e in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert transition(7, "constant", f_end=0.25) == 0.25
    assert transition(0, "linear") == 1.0
    assert transition(25, "linear", f_end=0.1, horizon=50) == pytest.approx(1 - 0.9 * 0.5)
    assert transition(99, "linear", f_end=0.1, horizon=50) == pytest.approx(0.1)
    assert transition(25, "cosine", f_end=0.1, horizon=50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert transition(10, "cosine", f_end=0.0, horizon=20) == pytest.approx(0.5)
    assert transition(60, "cosine", f_end=0.2, horizon=50) == pytest.approx(0.2)
    assert transition(4, lambda e: 1 / (1 + e)) == 0.2


@pytest.mark.parametrize(
    ("schedule", "match"), [("step", "unknown schedule"), (lambda e: 2.0, "outside")]
)
def test_bad_schedules_say_what_was_expected(schedule, match):
    with pytest.raises(ConfigError, match=match):
        transition(1, schedule)


def test_schedule_options_in_a_session(mlp, batch):
    x, y = batch
    with pytest.raises(PluginLoadError, match="schedule"):
        infoshape.Session(mlp, plugins=["mi_ce"], options={"mi_ce": {"schedule": "step"}})
    options = {"mi_ce": {"schedule": lambda e: 0.75, "sigma": 0.5}}
    with infoshape.Session(mlp, plugins=["mi_ce"], options=options) as session:
        out = session.model(x)
        loss = session.loss(out, y).detach()
        expected = 0.75 * F.cross_entropy(out, y) - 0.25 * label_mi(out.softmax(1), y, 0.5)
        assert float(loss) == pytest.approx(float(expected.detach()), abs=1e-6)
    options = {"mi_ce": {"schedule": lambda e: -1.0}}
    with infoshape.Session(mlp, plugins=["mi_ce"], options=options) as session:
        with pytest.raises(PluginHookError, match="outside"):
            session.loss(session.model(x), y)


# ------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("n_classes", [2, 4, 10])
def test_perfect_and_constant_predictors(n_classes):
    """One-hot predictions: I = H(Y) = ln C (log2 C in bits); a constant predictor: I = 0."""
    y = torch.arange(20 * n_classes) % n_classes
    perfect = F.one_hot(y, n_classes).double()  # kernel between classes exp(-1/σ²) = e^-400
    assert float(label_mi(perfect, y, 0.05)) == pytest.approx(math.log(n_classes), abs=1e-9)
    bits = float(label_mi(perfect, y, 0.05, base=2))
    assert bits == pytest.approx(math.log2(n_classes), abs=1e-9)
    constant = torch.full((y.numel(), n_classes), 1 / n_classes, dtype=torch.float64)
    assert abs(float(label_mi(constant, y, 0.3))) < 1e-9


def test_unbalanced_perfect_predictor_is_the_renyi_entropy_of_the_proportions():
    y = torch.tensor([0] * 10 + [1] * 6 + [2] * 4)
    p, alpha = np.array([0.5, 0.3, 0.2]), 1.01
    h = math.log((p**alpha).sum()) / (1 - alpha)
    perfect = F.one_hot(y, 3).double()
    assert float(label_mi(perfect, y, 0.05, alpha)) == pytest.approx(h, abs=1e-9)


def test_mi_is_bounded_by_the_label_entropy():
    y = torch.arange(60) % 3
    probs = torch.randn(60, 3, generator=_gen(2), dtype=torch.float64).softmax(1)
    for sigma in (0.05, 0.2, 1.0):
        assert -1e-9 <= float(label_mi(probs, y, sigma)) <= math.log(3) + 1e-9


# ------------------------------------------------------------------ kernel width
def test_alignment_curve_equals_the_definition():
    x = torch.randn(30, 5, generator=_gen(3), dtype=torch.float64)
    y = torch.arange(30) % 3
    sigmas = [0.3, 1.0, 2.5]
    Ky = (y[:, None] == y[None, :]).double()
    for sigma, value in zip(sigmas, alignment_curve(x, y, sigmas), strict=True):
        K = torch.exp(-(torch.cdist(x, x) ** 2) / (2 * sigma**2))
        assert float(value) == pytest.approx(
            float((K * Ky).sum() / (K.norm() * Ky.norm())), rel=1e-6
        )


def _planted_logits(s: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax rows in 4 clusters of within-cluster RMS distance ``w = s·√(2·3)``, 3w apart.

    Centres ``a·e_y + (1 − a)/4`` with ``a·√2 = 3w``; the noise is centred per row, so rows
    stay on the simplex (3 free coordinates). The logits are ``log p``.
    """
    y = torch.arange(64) % 4
    noise = torch.randn(64, 4, generator=_gen(seed), dtype=torch.float64)
    a = 3 * s * math.sqrt(6) / math.sqrt(2)
    p = a * F.one_hot(y, 4).double() + (1 - a) / 4 + s * (noise - noise.mean(1, keepdim=True))
    return p.log(), y


@pytest.mark.parametrize("s", [0.02, 0.04])
def test_width_per_epoch_recovers_the_planted_scale(s):
    """Three batches of one epoch: the argmax of their mean alignment within [w/2, 2w]."""
    w = s * math.sqrt(6)
    plugin = _plugin(sigma_range=(0.01, 0.5))
    session = types.SimpleNamespace(epoch=0)
    batches = [_planted_logits(s, seed) for seed in (4, 5, 6)]
    for logits, y in batches:
        plugin.infoshape_objective(session, logits, y)
    grid = np.linspace(0.01, 0.5, 100)
    mean = sum(alignment_curve(lg.softmax(1), y, grid) for lg, y in batches) / 3
    plugin.infoshape_epoch_end(session, 0)
    assert plugin.sigma == float(grid[int(mean.argmax())])
    assert 0.5 * w <= plugin.sigma <= 2 * w


def test_width_schedule_across_epochs_and_state():
    """Epoch 0 uses its running choice; epoch 1 the choice of epoch 0; state round-trips."""
    plugin = _plugin(sigma_range=(0.01, 0.5), sigma_decay=0.5)
    session = types.SimpleNamespace(epoch=0)
    assert plugin.width() is None
    logits, y = _planted_logits(0.02, 7)
    plugin.infoshape_objective(session, logits, y)
    first = plugin.width()
    plugin.infoshape_epoch_end(session, 0)
    assert plugin.sigma == first
    logits, y = _planted_logits(0.04, 8)
    plugin.infoshape_objective(session, logits, y)
    assert plugin.width() == first  # the previous epoch's width, whatever this batch says
    state = plugin.infoshape_state_dict()
    other = _plugin(sigma_range=(0.01, 0.5), sigma_decay=0.5)
    other.infoshape_load_state_dict(state)
    plugin.infoshape_epoch_end(session, 1)
    other.infoshape_epoch_end(session, 1)
    grid = np.linspace(0.01, 0.5, 100)
    second = float(grid[int(alignment_curve(logits.softmax(1), y, grid).argmax())])
    assert plugin.sigma == other.sigma == pytest.approx(0.5 * first + 0.5 * second)


# ------------------------------------------------------------------ metrics
def test_epoch_metrics_and_the_saturation_norm_by_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 3))
    model.double()
    x = torch.randn(24, 4, generator=_gen(9), dtype=torch.float64)
    y = torch.arange(24) % 3
    with infoshape.Session(model, plugins=["mi_ce"], options={"mi_ce": {"sigma": 0.2}}) as s:
        loss = s.loss(s.model(x), y)
        loss.backward()
        s.step_end()
        metrics = s.epoch_end(probe=(x, y))
    assert set(metrics) == {
        "mi_ce.f",
        "mi_ce.sigma",
        "mi_ce.I_YYhat",
        "mi_ce.I_YX",
        "mi_ce.dpi",
        "mi_ce.grad_norm",
    }  # a fixed width: no alignment curve
    assert metrics["mi_ce.f"] == 1.0 and metrics["mi_ce.sigma"] == 0.2
    with torch.no_grad():
        assert metrics["mi_ce.I_YYhat"] == pytest.approx(
            float(label_mi(model(x).softmax(1), y, 0.2))
        )
    assert metrics["mi_ce.dpi"] == float(metrics["mi_ce.I_YX"] >= metrics["mi_ce.I_YYhat"])
    params = list(model.parameters())
    grads = []
    with torch.no_grad():
        for p in params:
            for k in range(p.numel()):
                value, step = [], 1e-6
                for sign in (1, -1):
                    p.view(-1)[k] += sign * step
                    value.append(float(label_mi(model(x).softmax(1), y, 0.2)))
                    p.view(-1)[k] -= sign * step
                grads.append((value[0] - value[1]) / (2 * step))
    assert metrics["mi_ce.grad_norm"] == pytest.approx(float(np.linalg.norm(grads)), rel=1e-6)


def test_shared_input_width_makes_i_yx_the_label_entropy(mlp):
    """Inputs ≥ 2 apart with σ = 0.1: K_X = I up to e^-200, so I(Y;X) = H(Y) = ln 3."""
    x = 2.0 * torch.eye(8).repeat(3, 1)  # 24 inputs, 2√2 apart or equal ...
    x = x + torch.arange(24)[:, None] * torch.eye(8)[0]  # ... shifted apart: all ≥ 2 apart
    y = torch.arange(24) % 3
    options = {"mi_ce": {"sigma": 0.1, "input_sigma": "shared"}}
    with infoshape.Session(mlp, plugins=["mi_ce"], options=options) as session:
        metrics = session.epoch_end(probe=(x, y))
    assert metrics["mi_ce.I_YX"] == pytest.approx(math.log(3), abs=1e-9)
    assert metrics["mi_ce.dpi"] == 1.0


def test_metrics_with_width_search_without_probe(mlp, batch):
    x, y = batch
    with infoshape.Session(mlp, plugins=["mi_ce"], options={"mi_ce": {"probe_chunk": 10}}) as s:
        assert s.epoch_end() == {"mi_ce.f": 1.0}  # nothing seen yet
        s.loss(s.model(x), y)
        s.step_end()
        metrics = s.epoch_end(probe=(x, y))
        assert metrics["mi_ce.alignment"].shape == (100,)
        assert metrics["mi_ce.sigma"] == s.plugins["mi_ce"].plugin.sigma
        assert 0.1 <= metrics["mi_ce.sigma"] <= 1.0
        assert all(math.isfinite(metrics[k]) for k in ("mi_ce.I_YYhat", "mi_ce.I_YX"))


# ------------------------------------------------------------------ conformance
@pytest.mark.parametrize(
    "options",
    [{}, {"schedule": "constant", "f_end": 0.5, "sigma": 0.3}],
    ids=["defaults", "mixing-from-epoch-0"],
)
def test_plugin_conformance(options):
    PluginTester(MICE, options=options).check_all()


def test_entry_point():
    with infoshape.Session(nn.Linear(2, 2), plugins=["mi_ce"]) as session:
        assert isinstance(session.plugins["mi_ce"].plugin, MICE)


# ------------------------------------------------------------------ host syncs (issue 17)
def _step_syncs(s, x, y):
    from infoshape.testing import count_host_syncs

    with count_host_syncs() as calls:
        loss = s.loss(s.model(x), y)
        loss.backward()
        s.step_end()
    return calls


def test_a_training_step_reads_no_label_count_or_width_back():
    """No ``int(labels.max())`` (one-hot width) and no argmax read-back of the width.

    Before: two ``__int__`` per step (the one-hot of the alignment's and the MI's label
    Gram) and, in epoch 0, the running width's ``argmax``. The ``__bool__`` left are the
    matrix-entropy checks (NaN/Inf in the Gram matrices, a unit diagonal), counted here so a
    new sync fails the test.
    """
    from infoshape.testing import small_mlp

    torch.manual_seed(0)
    x, y = torch.randn(24, 8), torch.arange(24) % 3
    with infoshape.Session(small_mlp((8,), 3), plugins=["mi_ce"], log_every=1000) as s:
        s.loss(s.model(x), y).backward()
        s.step_end()
        epoch0 = _step_syncs(s, x, y)  # f = 1: the running width is not needed
        s.epoch_end()
        epoch1 = _step_syncs(s, x, y)  # f < 1: the MI term with the chosen width
    assert dict(epoch0) == {}, epoch0
    assert set(epoch1) == {"__bool__"} and epoch1["__bool__"] <= 5, epoch1


def test_label_mi_does_not_depend_on_n_classes():
    from infoshape.math.matrix_entropy import entropy

    g = torch.Generator().manual_seed(3)
    z = torch.randn(20, 4, generator=g).softmax(1)
    labels = torch.tensor([0, 1, 3] * 6 + [0, 1])  # class 2 absent
    inferred = label_mi(z, labels, 0.5)
    assert torch.equal(label_mi(z, labels, 0.5, n_classes=4), inferred)
    assert torch.equal(label_mi(z, labels, 0.5, n_classes=7), inferred)
    # H(A_y) as before: the entropy of the present classes' shares
    share = torch.bincount(labels).double() / labels.numel()
    h_y = entropy(torch.diag(share[share > 0]), 1.01)
    h_y_all = entropy(torch.diag(share), 1.01)
    assert torch.equal(h_y, h_y_all)
