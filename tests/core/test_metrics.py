"""Step metrics held on the device: no host sync in a step, every step still one row.

Host syncs are counted on the CPU by wrapping the tensor methods that wait for a device
(``infoshape.testing.count_host_syncs``): the same calls happen on a GPU, where each one
stalls the queue.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import infoshape
from infoshape import Penalty, Tap, hookimpl
from infoshape.errors import ConfigError, NonFiniteError
from infoshape.metrics import FINITE, StepMetrics, capture_sums, first_nonfinite, visible
from infoshape.testing import count_host_syncs


class Net(torch.nn.Sequential):
    def __init__(self) -> None:
        super().__init__()
        self.add_module("fc1", torch.nn.Linear(16, 32))
        self.add_module("relu1", torch.nn.ReLU())
        self.add_module("fc2", torch.nn.Linear(32, 32))
        self.add_module("relu2", torch.nn.ReLU())
        self.add_module("fc3", torch.nn.Linear(32, 4))


def _data(n_batches: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 16, generator=g), torch.randint(0, 4, (16,), generator=g))
        for _ in range(n_batches)
    ]


def test_100_steps_of_capture_stream_shade_cr_irnn_sync_at_most_5_times(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = _data()
    taps = [Tap("relu1", store="stream"), Tap("relu2", store=True)]
    seen: list[torch.Tensor] = []
    path = tmp_path / "a.zarr"
    with infoshape.Session(
        model, plugins=["shade", "cr", "irnn"], store=path, n_train=64, taps=taps, log_every=50
    ) as s:
        for step in range(105):  # 5 warm-up steps, then 100 counted
            x, y = data[step % len(data)]
            with count_host_syncs() as calls:
                loss = s.loss(s.model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                s.step_end()
            if step == 4:
                total = calls.copy()
                total.clear()
            elif step > 4:
                total.update(calls)
            seen.append(loss.detach())
        s.epoch_end(probe=data[0])
    assert sum(total.values()) <= 5, dict(total)
    stored = infoshape.open_store(path)["metrics"]["loss"]
    assert stored.sizes["step"] == 105
    np.testing.assert_array_equal(
        stored.values, np.array([float(v) for v in seen], dtype=stored.dtype)
    )
    assert infoshape.open_store(path)["stream"]["relu1"].sizes["step"] == 105


def test_rows_reach_the_sinks_every_log_every_steps_and_at_epoch_end(tmp_path):
    written: list[int] = []

    class Sink:
        def write(self, stage, index, metrics):
            if stage == "step":
                written.append(index)

        def close(self):
            pass

    model = Net()
    with infoshape.Session(model, sinks=[Sink()], log_every=3) as s:
        for step, (x, y) in enumerate(_data(5)):
            s.loss(s.model(x), y).backward()
            s.step_end()
            assert written == list(range(3 * ((step + 1) // 3)))
        s.epoch_end()
        assert written == [0, 1, 2, 3, 4]


class _NaNAt:
    """A penalty that turns NaN at one step."""

    name = "nan_at"

    def __init__(self, step: int) -> None:
        self.at = step

    @hookimpl
    def infoshape_penalty(self, session, outputs):
        value = outputs.pow(2).mean()
        return [Penalty("square", value * float("nan") if session.step == self.at else value)]


def test_a_nan_penalty_is_reported_at_the_flush_with_its_step_and_plugin(tmp_path):
    path = tmp_path / "a.zarr"
    data = _data()
    with pytest.raises(NonFiniteError) as info:
        with infoshape.Session(Net(), plugins=[_NaNAt(3)], store=path, log_every=5) as s:
            for step in range(5):
                x, y = data[step % len(data)]
                s.loss(s.model(x), y)  # step 3's NaN does not stop the step itself
                s.step_end()
    message = str(info.value)
    assert "non-finite values at step 3: penalty.square of plugin 'nan_at'" in message
    assert "check_every=1" in message
    stored = infoshape.open_store(path)["metrics"]
    assert list(stored["step"].values) == [0, 1, 2]  # the rows before the first bad step


def test_a_nan_capture_is_reported_with_its_tap_and_first_step():
    data = _data()
    with infoshape.Session(Net(), taps=[Tap("relu1")], log_every=4) as s:
        for step in range(4):
            x, y = data[step]
            if step in (1, 2):
                x = x.clone()
                x[0, 0] = math.nan
            s.loss(s.model(x), y)
            if step < 3:
                s.step_end()
        with pytest.raises(NonFiniteError, match=r"step 1: tap 'relu1' \(relu1, post\)"):
            s.step_end()


def test_warn_reports_once_per_flush_and_keeps_every_row(tmp_path):
    path = tmp_path / "a.zarr"
    data = _data()
    with infoshape.Session(
        Net(), plugins=[_NaNAt(1)], store=path, log_every=4, on_nonfinite="warn"
    ) as s:
        for step in range(4):
            x, y = data[step]
            s.loss(s.model(x), y)
            if step < 3:
                s.step_end()
        with pytest.warns(RuntimeWarning, match="non-finite values at step 1"):
            s.step_end()
    stored = infoshape.open_store(path)["metrics"]["penalty.square"].values
    assert np.isnan(stored[1]) and np.isfinite(stored[[0, 2, 3]]).all()


def test_check_every_1_stops_in_the_step_before_the_loss_is_returned():
    x, y = _data(1)[0]
    with infoshape.Session(Net(), plugins=[_NaNAt(0)], check_every=1) as s:
        with pytest.raises(NonFiniteError, match="loss is not finite at step 0"):
            s.loss(s.model(x), y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"log_every": 0}, "log_every must be a positive"), ({"check_every": 10}, "check_every")],
)
def test_bad_log_every_and_check_every_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        infoshape.Session(Net(), **kwargs)


def test_step_metrics_drain_in_order_with_exact_values_and_varying_names():
    buffer = StepMetrics(flush_every=3)
    exact = torch.tensor(1 / 3, dtype=torch.float64)
    buffer.add(0, {"loss": torch.tensor(0.1), "exact64": exact, "note": 2.5})
    buffer.add(1, {"loss": torch.tensor(0.2, dtype=torch.bfloat16)})
    assert not buffer.full
    buffer.add(2, {"loss": torch.tensor(0.3), "every3": torch.tensor(7.0), "arr": np.ones(2)})
    assert buffer.full
    rows = buffer.drain()
    assert [index for index, _ in rows] == [0, 1, 2] and len(buffer) == 0
    assert rows[0][1]["loss"] == float(torch.tensor(0.1))  # float32 value, not rounded
    assert rows[0][1]["exact64"] == 1 / 3 and rows[0][1]["note"] == 2.5
    assert rows[1][1] == {"loss": float(torch.tensor(0.2, dtype=torch.bfloat16))}
    assert rows[2][1]["every3"] == 7.0 and rows[2][1]["arr"].tolist() == [1.0, 1.0]


def test_capture_sums_flag_nan_and_inf_but_not_large_half_values():
    captures = {
        "ok": torch.full((4, 3), 60000.0, dtype=torch.float16),  # sum overflows float16 only
        "nan": torch.tensor([[1.0, math.nan]]),
        "inf": torch.tensor([[math.inf, 1.0]], dtype=torch.float64),
        "int": torch.ones(2, dtype=torch.int64),
    }
    sums = capture_sums(captures)
    assert set(sums) == {FINITE + "ok", FINITE + "nan", FINITE + "inf"}
    row = {name: float(value) for name, value in sums.items()}
    step, names, _ = first_nonfinite([(0, {"loss": 1.0}), (1, row)])
    assert step == 1 and sorted(names) == [FINITE + "inf", FINITE + "nan"]
    assert visible({"loss": 1.0, **row}) == {"loss": 1.0}


def test_out_of_range_labels_are_refused_without_reading_them_back():
    x, _ = _data(1)[0]
    y = torch.full((16,), 7)
    with infoshape.Session(Net()) as s:
        with pytest.raises(ConfigError, match=r"labels in \[7, 7\]"):
            s.loss(s.model(x), y)
