"""Plots of a run store: information planes of analyses, metric curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.image import imread

import infoshape
from infoshape import Estimator, Penalty, StoreError, Tap
from infoshape.apps.analysis import analyze
from infoshape.apps.metric_plots import _panels
from infoshape.apps.report import (
    default_report_dir,
    information_plane_figure,
    plot_information_plane,
    report,
)
from infoshape.testing import small_mlp

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SquaredOutputs:
    """A penalty plugin, so the metrics hold ``penalty.*`` curves."""

    @infoshape.hookimpl
    def infoshape_penalty(self, session, captures, outputs, targets):
        return [Penalty(name="outputs_l2", value=outputs.pow(2).mean(), weight=0.01)]


def plane(x, t, labels):
    return t.abs().mean() * (1 + t.shape[1] / 100), t.std()


def _sgd_step(model: torch.nn.Module, lr: float) -> None:
    """Plain SGD by hand (torch.optim imports torch._dynamo: seconds on a small machine)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= lr * parameter.grad
            parameter.grad = None


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """3 epochs of 35 steps (over 100: the step curves get smoothed), 2 taps, 2 analyses."""
    path = tmp_path_factory.mktemp("report") / "run.zarr"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 8, generator=g), torch.randint(0, 3, (160,), generator=g)
    torch.manual_seed(0)
    model = small_mlp()
    taps = [Tap("relu1", store=True), Tap("relu2", store=True)]
    with infoshape.Session(model, plugins=[SquaredOutputs()], store=path, taps=taps) as s:
        for _ in range(3):
            for i in range(35):
                batch = slice(i * 4 % 120, i * 4 % 120 + 16)
                s.loss(s.model(x[batch]), y[batch]).backward()
                _sgd_step(model, lr=0.05)
                s.step_end()
            s.log_metrics({"test.accuracy": 0.3 + 0.2 * s.epoch, "custom.score": 10.0**s.epoch})
            s.epoch_end(probe=(x[-40:], y[-40:]))
    analyze(path, Estimator(name="toy", function=plane, information_plane=plane))
    bits = Estimator(name="toy_bits", function=plane, unit="bits", information_plane=plane)
    analyze(path, bits, epochs=[1], max_samples=25)
    return path


def _check_png(path: Path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    shape = imread(path).shape
    assert len(shape) == 3 and shape[0] >= 300 and shape[1] >= 400 and shape[2] in (3, 4)
    return shape


def test_report_writes_planes_and_metrics_beside_the_store(run):
    paths = report(run)
    folder = run.parent / "run.report"
    assert default_report_dir(run) == folder
    assert paths == [
        folder / "information_plane_toy.png",
        folder / "information_plane_toy_bits.png",
        folder / "metrics.png",
    ]
    for path in paths:
        _check_png(path)


def test_report_to_another_folder(run, tmp_path):
    paths = report(str(run), out_dir=tmp_path / "figures")
    assert {p.name for p in paths} == {
        "information_plane_toy.png",
        "information_plane_toy_bits.png",
        "metrics.png",
    }
    assert all(p.parent == tmp_path / "figures" for p in paths)


def test_metric_panels_group_losses_penalties_and_epoch_scalars(run):
    metrics = xr.open_datatree(run, engine="zarr")["metrics"].to_dataset()
    step = {n: v for n, v in metrics.data_vars.items() if v.dims == ("step",)}
    epoch = {n: v for n, v in metrics.data_vars.items() if v.dims == ("epoch",)}
    panels = {title: names for title, _, names in _panels(step, epoch)}
    assert panels["training loss per step"] == ["loss", "loss.objective"]
    assert panels["penalties per step"] == ["penalty.outputs_l2"]
    assert panels["accuracy per epoch"] == ["test.accuracy"]
    assert panels["custom per epoch"] == ["custom.score"]  # one panel per plugin


def test_store_without_analysis_draws_the_metrics_only(tmp_path):
    path = tmp_path / "plain.zarr"
    with infoshape.Session(small_mlp(), store=path) as s:
        for _ in range(2):
            s.loss(s.model(torch.randn(4, 8)), torch.tensor([0, 1, 2, 0])).backward()
            s.step_end()
            s.epoch_end()
    assert [p.name for p in report(path)] == ["metrics.png"]
    empty = tmp_path / "empty.zarr"
    infoshape.Session(small_mlp(), store=empty).close()
    assert report(empty) == []


def test_plane_with_one_epoch_and_missing_values(tmp_path):
    analysis = xr.Dataset(
        {
            "I_XT": (("epoch", "tap"), np.array([[1.0, np.nan, 3.0]])),
            "I_TY": (("epoch", "tap"), np.array([[0.5, 0.7, np.nan]])),
        },
        coords={"epoch": [4], "tap": ["a", "b", "c"]},
        attrs={"estimator": "handmade", "unit": "bits", "options": {"k": 3}},
    )
    path = plot_information_plane(analysis, tmp_path / "one.png", labels=np.array([0, 1, 1, 2]))
    _check_png(path)


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no infoshape store"):
        report(tmp_path / "nothing.zarr")


def _plane(flags: list[list[str]], i_ty: list[list[float]], h_y: float = 1.5) -> xr.Dataset:
    return xr.Dataset(
        {
            "I_XT": (("epoch", "tap"), np.array([[2.0, 3.0], [2.5, 3.5]])),
            "I_TY": (("epoch", "tap"), np.array(i_ty)),
            "flags": (("epoch", "tap"), np.array(flags, dtype=object)),
        },
        coords={"epoch": [0, 1], "tap": ["a", "b"]},
        attrs={"estimator": "handmade", "unit": "nats", "H_Y": h_y},
    )


def _texts(figure) -> tuple[list[str], str]:
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    notes = [
        t for t in figure.findobj() if getattr(t, "get_gid", lambda: None)() == "assumption_notes"
    ]
    return legend, "\n".join(t.get_text() for t in notes)


def test_flagged_points_are_marked_and_named_and_a_ceiling_is_said():
    analysis = _plane(
        [["ridge_dominated,exceeds_h_y", ""], ["exceeds_h_y", "exceeds_h_y"]],
        [[1.5, 1.5], [1.5, 1.5]],
    )
    figure = information_plane_figure(analysis)
    marks = {c.get_gid(): c.get_offsets().tolist() for c in figure.axes[0].collections}
    assert marks["flag:ridge_dominated"] == [[2.0, 1.5]]
    assert sorted(marks["flag:exceeds_h_y"]) == [[2.0, 1.5], [2.5, 1.5], [3.5, 1.5]]
    legend, notes = _texts(figure)
    assert "ridge_dominated (1 of 4)" in legend and "exceeds_h_y (3 of 4)" in legend
    assert "H(Y) = 1.50 (ceiling of I(T;Y))" in legend  # from the H_Y attr, no labels given
    assert "ridge_dominated: a covariance is (near) singular" in notes
    assert "exceeds_h_y: the raw estimate" in notes
    assert "every point sits at the ceiling I(T;Y) = H(Y) = 1.5" in notes


def test_unflagged_plane_has_no_marks_and_no_notes():
    figure = information_plane_figure(_plane([["", ""], ["", ""]], [[0.2, 0.4], [0.3, 0.5]]))
    assert not [c for c in figure.axes[0].collections if str(c.get_gid()).startswith("flag:")]
    legend, notes = _texts(figure)
    assert notes == "" and not any("of 4)" in t for t in legend)


def test_report_marks_the_flags_that_analyze_wrote(run, tmp_path):
    import shutil

    store = Path(shutil.copytree(run, tmp_path / "run.zarr"))
    with pytest.warns(infoshape.EstimatorAssumptionWarning):
        analyze(store, "gaussian", max_samples=30)  # 10 per class, 16 units: ridge sets it
    analysis = infoshape.open_store(store)["analysis/gaussian"].to_dataset()
    legend, notes = _texts(information_plane_figure(analysis))
    assert any(t.startswith("ridge_dominated (") for t in legend) and "ridge_dominated:" in notes
    assert tmp_path / "run.report" / "information_plane_gaussian.png" in report(store)


def _metrics_dataset() -> xr.Dataset:
    steps, epochs = np.arange(90), np.arange(4)
    sparse = np.full(90, np.nan)
    sparse[::30] = [3.0, 2.0, 1.0]  # a penalty applied every 30 steps
    return xr.Dataset(
        {
            "loss": ("step", np.linspace(2.0, 1.0, 90)),
            "penalty.irnn.l1": ("step", sparse),
            "mi_ce.dpi": ("epoch", [1.0, 1.0, 0.0, 1.0]),
            "mi_ce.I_YX": ("epoch", [0.5, 0.9, 1.5, 2.0]),
            "characteristics.fc1.sparsity": ("epoch", [0.1, 0.2, 0.3, 0.4]),
            "characteristics.fc1.covariance": ("epoch", [30.0, 20.0, 10.0, 5.0]),
            "test.accuracy": ("epoch", [0.5, 0.6, 0.7, 0.8]),
        },
        coords={"step": steps, "epoch": epochs},
    )


def test_metric_plots_show_sparse_metrics_flags_apart_and_one_panel_per_plugin(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from infoshape.apps import report as report_module

    captured = {}
    real_save = report_module._save
    try:
        report_module._save = lambda figure, path: captured.setdefault("figure", figure) and path
        report_module.plot_metrics(_metrics_dataset(), tmp_path / "m.png")
    finally:
        report_module._save = real_save
    axes = {ax.get_title().split("\n")[0]: ax for ax in captured["figure"].axes}
    assert set(axes) == {
        "training loss per step",
        "penalties per step",
        "flags per epoch",
        "accuracy per epoch",
        "mi_ce per epoch",
        "characteristics per epoch",
    }
    (l1,) = axes["penalties per step"].get_lines()
    assert l1.get_xdata().tolist() == [0, 30, 60] and l1.get_marker() not in (None, "None", "")
    flags = axes["flags per epoch"]
    assert flags.get_yscale() == "linear" and [t.get_text() for t in flags.get_yticklabels()] == [
        "no",
        "yes",
    ]
    assert axes["mi_ce per epoch"].get_lines()[0].get_label() == "mi_ce.I_YX"  # flag not here
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in axes.values())
    plt.close(captured["figure"])


def test_the_two_ceilings_are_told_apart():
    analysis = _plane([["", ""], ["", ""]], [[1.0, 1.2], [1.1, 1.3]])
    figure = information_plane_figure(analysis, labels=np.arange(40) % 4)
    ax = figure.axes[0]
    ceilings = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert set(ceilings) == {"ceiling:log N", "ceiling:H(Y)"}
    styles = {(line.get_color(), line.get_linestyle()) for line in ceilings.values()}
    assert len({c for c, _ in styles}) == 2 and len({d for _, d in styles}) == 2
    legend, _ = _texts(figure)
    assert "log N = 3.69 (ceiling of I(X;T))" in legend
    assert any(t.startswith("H(Y) = ") and t.endswith("(ceiling of I(T;Y))") for t in legend)
