"""Stream-mode capture budgets: reservoir, random projection, pooling, dtype, attrs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import infoshape
from infoshape import CaptureError, ConfigError, Stream, Tap, TapError
from infoshape.store.budget import Reservoir, jl_epsilon, random_projection


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


# ----------------------------------------------------------------------------- reservoir
def test_reservoir_is_uniform_over_an_epoch():
    # 40 items offered in uneven batches; a reservoir of 10 keeps each with p = 10/40.
    # Over R = 1000 seeded runs the inclusion count of every item is Binomial(R, 1/4):
    # mean 250, sd sqrt(1000 * 1/4 * 3/4) = 13.69. Tolerance: every |z| < 4.5 (two-sided
    # 6.8e-6 per item, 2.7e-4 for all 40 together, so a correct sampler fails ~never).
    n_items, size, runs = 40, 10, 1000
    batches = [7, 1, 12, 5, 15]
    counts = np.zeros(n_items)
    for seed in range(runs):
        reservoir = Reservoir(size, seed)
        start = 0
        for b in batches:
            ids = torch.arange(start, start + b)
            reservoir.offer(ids.float()[:, None], labels=None, index=ids, step=0)
            start += b
        rows, _, index, _ = reservoir.take()
        assert sorted(index.tolist()) == sorted(set(index.tolist()))  # no duplicates
        np.testing.assert_array_equal(rows[:, 0], index)  # rows travel with their index
        counts[index] += 1
    z = (counts - runs * size / n_items) / math.sqrt(runs * 0.25 * 0.75)
    assert np.abs(z).max() < 4.5, z
    # the first batch is not favoured over the last (a common bug): the means of their
    # counts differ by less than 4.5 sd of the difference (sd 13.69 * sqrt(1/7 + 1/15))
    assert abs(counts[:7].mean() - counts[-15:].mean()) < 4.5 * 13.69 * math.sqrt(1 / 7 + 1 / 15)


def test_reservoir_keeps_everything_while_not_full_and_restarts_per_epoch():
    reservoir = Reservoir(8, seed=0)
    reservoir.offer(torch.arange(5.0)[:, None], labels=torch.arange(5) % 2, index=None, step=3)
    rows, labels, index, steps = reservoir.take()
    np.testing.assert_array_equal(rows[:5, 0], np.arange(5.0))
    assert np.isnan(rows[5:]).all()
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 0, -1, -1, -1])
    np.testing.assert_array_equal(index, [-1] * 8)  # no indices given
    np.testing.assert_array_equal(steps, [3] * 5 + [-1] * 3)
    assert reservoir.take() is None  # a new epoch: nothing offered yet


# ----------------------------------------------------------------------------- projection
def test_random_projection_keeps_distances_within_the_jl_bound():
    # n = 50 points in d = 2000 dims projected to m = 1000: Dasgupta–Gupta's bound gives
    # eps with m = 4 ln n / (eps^2/2 - eps^3/3); with probability >= 1 - 1/n all squared
    # distances keep within (1 +- eps). Seeded, so this is one fixed draw.
    n, d, m = 50, 2000, 1000
    eps = jl_epsilon(n, m)
    assert 0.18 < eps < 0.20  # 4 ln 50 / 1000 = 0.01565 = eps^2/2 - eps^3/3 at eps ~ 0.190
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(5))
    R = random_projection(d, m, seed=11)
    assert R.shape == (d, m)
    assert abs(float(R.var()) - 1 / m) < 0.01 / m  # N(0, 1/m) entries (2M draws)
    before = torch.cdist(x, x) ** 2
    after = torch.cdist(x @ R, x @ R) ** 2
    off = ~torch.eye(n, dtype=torch.bool)
    ratio = after[off] / before[off]
    assert float(ratio.min()) > 1 - eps and float(ratio.max()) < 1 + eps
    torch.testing.assert_close(random_projection(d, m, seed=11), R)  # same seed, same R


class _ConvNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(2, 3, 3, padding=1))
        self.add_module("relu", nn.ReLU())
        self.add_module("flat", nn.Flatten())
        self.add_module("fc", nn.Linear(3 * 4 * 4, 5))


def _run(model, path, taps, x, y, epochs=1, batch=8, **kwargs):
    with infoshape.Session(model, store=path, taps=taps, **kwargs) as s:
        for _ in range(epochs):
            for lo in range(0, len(x), batch):
                out = s.model(x[lo : lo + batch])
                s.loss(out, y[lo : lo + batch], index=torch.arange(lo, lo + len(out)))
                s.step_end()
            s.epoch_end()
    return infoshape.open_store(path)["stream"].to_dataset()


@pytest.fixture
def conv_data():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    return _ConvNet(), torch.randn(24, 2, 4, 4, generator=g), torch.randint(0, 5, (24,))


def test_pool_and_projection_are_stored_and_reproducible(tmp_path, conv_data):
    model, x, y = conv_data
    taps = [
        Tap("relu", store=Stream(pool=2), name="pooled"),
        Tap("relu", store=Stream(pool=2, project=6, seed=4), name="proj"),
    ]
    stream = _run(model, tmp_path / "r.zarr", taps, x, y)
    with torch.no_grad():
        raw = torch.relu(model.conv(x))  # (24, 3, 4, 4): the trained model is unchanged
    # 2x2 average pooling of a 4x4 map by hand: the mean of each 2x2 block
    by_hand = raw.reshape(24, 3, 2, 2, 2, 2).mean(dim=(3, 5)).numpy()
    pooled = stream["pooled"].values.reshape(24, 3, 2, 2)  # 3 steps of 8 samples
    np.testing.assert_allclose(pooled, by_hand, rtol=1e-5, atol=1e-6)
    assert stream["pooled"].dims == ("step", "sample", "pooled_channel", "pooled_y", "pooled_x")
    # the stored matrix maps the (pooled, flattened) raw activations onto the stored rows
    R = stream["proj_projection"].values
    assert R.shape == (12, 6) and stream["proj_projection"].dims == ("proj_source", "proj_unit")
    np.testing.assert_allclose(
        stream["proj"].values.reshape(24, 6), by_hand.reshape(24, 12) @ R, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(R, random_projection(12, 6, seed=4).numpy())
    attrs = stream["proj"].attrs
    assert attrs["stream_pool"] == 2 and attrs["stream_project"] == 6
    assert attrs["stream_seed"] == 4 and attrs["projection"] == "proj_projection"
    assert attrs["raw_shape"] == [3, 4, 4] and attrs["tap_module"] == "relu"
    assert "projection" not in stream["pooled"].attrs


def test_reservoir_tap_stores_one_row_per_epoch(tmp_path, conv_data):
    model, x, y = conv_data
    tap = Tap("fc", store=Stream(samples=5, every=2, dtype="float16"))
    stream = _run(model, tmp_path / "r.zarr", [tap], x, y, epochs=2, batch=4)
    assert "step" not in stream.dims  # a reservoir tap writes no per-step rows
    assert stream["fc"].dims == ("epoch", "fc_sample", "fc_unit")
    assert stream["fc"].dtype == np.float16 and list(stream["epoch"].values) == [0, 1]
    # 6 steps of 4 per epoch; every 2nd step is offered: steps 0, 2, 4 of epoch 0 and
    # 6, 8, 10 of epoch 1, i.e. the samples of batches 0, 2 and 4 (indices 0-3, 8-11, 16-19)
    assert set(stream["fc_step"].values[0].tolist()) <= {0, 2, 4}
    assert set(stream["fc_step"].values[1].tolist()) <= {6, 8, 10}
    offered = {*range(0, 4), *range(8, 12), *range(16, 20)}
    with torch.no_grad():
        expected = model(x).half().numpy()
    for epoch in range(2):
        index = stream["fc_sample_index"].values[epoch]
        assert set(index.tolist()) <= offered and len(set(index.tolist())) == 5
        np.testing.assert_array_equal(stream["fc"].values[epoch], expected[index])
        np.testing.assert_array_equal(stream["fc_label"].values[epoch], y.numpy()[index])
    assert stream["fc"].attrs["stream_samples"] == 5 and stream["fc"].attrs["stream_every"] == 2


def test_reservoir_of_an_epoch_that_never_ended_is_written_at_close(tmp_path, mlp, batch):
    x, y = batch
    path = tmp_path / "r.zarr"
    with infoshape.Session(mlp, store=path, taps=[Tap("fc1", store=Stream(samples=4))]) as s:
        s.loss(s.model(x[:3]), y[:3])
        s.step_end()
    stream = infoshape.open_store(path)["stream"].to_dataset()
    assert list(stream["epoch"].values) == [0]
    assert (
        np.isfinite(stream["fc1"].values[0, :3]).all()
        and np.isnan(stream["fc1"].values[0, 3]).all()
    )


def test_budget_validation_and_pooling_a_flat_tensor(tmp_path, mlp, batch):
    for bad in ({"stream_samples": 0}, {"stream_pool": -1}, {"stream_project": 1.5}):
        with pytest.raises((TypeError, ValueError)):
            Tap("fc1", store="stream", **bad)
    x, y = batch
    with (
        pytest.raises(CaptureError, match="stream_pool=2 of a tensor of shape"),
        infoshape.Session(
            mlp, store=tmp_path / "r.zarr", taps=[Tap("fc1", store=Stream(pool=2))]
        ) as s,
    ):
        s.loss(s.model(x), y)
        s.step_end()


def test_stream_budget_is_one_nested_value_and_the_old_keywords_warn():
    budget = Stream(every=10, samples=256, project=64)
    tap = Tap("fc1", store=budget)
    assert tap.store_mode == "stream" and tap.budget is budget
    assert (tap.stream_every, tap.stream_samples, tap.stream_project) == (10, 256, 64)
    assert Tap("fc1", store="stream").budget == Stream()
    assert Tap("fc1", store="stream") == Tap("fc1", store=Stream())
    both = Tap("fc1", store=("probe", Stream(every=2)))
    assert both.store_mode == "both" and both.budget.every == 2
    assert Tap("fc1", store="both").budget == Stream()
    with pytest.warns(DeprecationWarning, match=r"store=Stream\(every=10, dtype='float16'\)"):
        old = Tap("fc1", store="stream", stream_every=10, stream_dtype="float16")
    assert old.budget == Stream(every=10, dtype="float16") and old == Tap(
        "fc1", store=Stream(every=10, dtype="float16")
    )


def test_stream_budget_is_validated_and_given_once():
    for bad in ({"samples": 0}, {"pool": -1}, {"project": 1.5}, {"every": 0}, {"dtype": "int8"}):
        with pytest.raises(ConfigError, match=f"option '{next(iter(bad))}'"):
            Stream(**bad)
    with pytest.raises(TapError, match="given twice"):
        Tap("fc1", store=Stream(every=2), stream_every=3)
    with pytest.raises(TapError, match="unknown value"):
        Tap("fc1", store=(Stream(), Stream()))
