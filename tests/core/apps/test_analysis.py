"""Offline analysis: information-plane coordinates per epoch and tap, written back to the store.

The estimator of most tests is a Gaussian closed form written here in torch
(``I = ½(log det Σ_X + log det Σ_T − log det Σ_XT)``, a ridge keeps the
covariances regular); the tests recompute it independently with numpy on the
values that plain xarray reads from the store.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import infoshape
from infoshape import (
    ConfigError,
    Estimator,
    EstimatorAssumptionWarning,
    PluginError,
    StoreError,
    Tap,
    UnknownNameError,
)
from infoshape.apps.analysis import analyze, format_results, parse_epochs
from infoshape.testing import small_mlp

N_PROBE, EPOCHS = 45, 3


def _logdet(z: torch.Tensor, ridge: float) -> torch.Tensor:
    centred = z - z.mean(0)
    cov = centred.T @ centred / (z.shape[0] - 1)
    return torch.linalg.slogdet(cov + ridge * torch.eye(z.shape[1], dtype=z.dtype))[1]


def gaussian_plane(x, t, labels, ridge: float = 1e-2):
    """I(X;T) and I(T;Y) of Gaussians with the sample covariances (nats)."""
    i_xt = 0.5 * (_logdet(x, ridge) + _logdet(t, ridge) - _logdet(torch.cat([x, t], 1), ridge))
    classes = labels.unique()
    conditional = sum(
        (labels == c).double().mean() * _logdet(t[labels == c], ridge) for c in classes
    )
    return i_xt, 0.5 * (_logdet(t, ridge) - conditional)


GAUSS = Estimator(name="gauss_test", function=gaussian_plane, information_plane=gaussian_plane)


def _np_logdet(z: np.ndarray, ridge: float) -> float:
    return float(np.linalg.slogdet(np.cov(z, rowvar=False) + ridge * np.eye(z.shape[1]))[1])


def expected_plane(x: np.ndarray, t: np.ndarray, labels: np.ndarray, ridge: float):
    """The same quantities, computed independently with numpy."""
    i_xt = 0.5 * (
        _np_logdet(x, ridge) + _np_logdet(t, ridge) - _np_logdet(np.hstack([x, t]), ridge)
    )
    conditional = sum(
        np.mean(labels == c) * _np_logdet(t[labels == c], ridge) for c in np.unique(labels)
    )
    return i_xt, 0.5 * (_np_logdet(t, ridge) - conditional)


def _write_run(path: Path, taps=("relu1", "relu2"), probe: bool = True) -> Path:
    """A tiny run: an MLP, a few training steps, a probe set at each of EPOCHS epoch ends."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    torch.manual_seed(0)
    model = small_mlp()
    with infoshape.Session(model, store=path, taps=[Tap(t, store=True) for t in taps]) as s:
        for _ in range(EPOCHS):
            for i in range(3):
                s.loss(s.model(x[i * 16 : i * 16 + 16]), y[i * 16 : i * 16 + 16]).backward()
                _sgd_step(model, lr=0.2)
                s.step_end()
            s.epoch_end(probe=(x[-N_PROBE:], y[-N_PROBE:]) if probe else None)
    return path


def _sgd_step(model: torch.nn.Module, lr: float) -> None:
    """Plain SGD by hand (torch.optim imports torch._dynamo: seconds on a small machine)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= lr * parameter.grad
            parameter.grad = None


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _write_run(tmp_path_factory.mktemp("analysis") / "run.zarr")


@pytest.fixture
def store(run, tmp_path) -> Path:
    """A fresh copy of the run for each test that writes to it."""
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run.zarr"))


def test_values_match_an_independent_computation(store):
    result = analyze(store, GAUSS, ridge=0.05)
    tree = xr.open_datatree(store, engine="zarr")  # plain xarray: no infoshape involved
    written = tree["analysis/gauss_test"].to_dataset()
    probe = tree["probe"].to_dataset()
    assert written["I_XT"].dims == ("epoch", "tap") and written["I_TY"].dims == ("epoch", "tap")
    assert list(written["epoch"].values) == list(range(EPOCHS))
    assert [str(t) for t in written["tap"].values] == ["relu1", "relu2"]
    x, labels = probe["input"].values.astype(np.float64), probe["label"].values
    for epoch in range(EPOCHS):
        for tap in ("relu1", "relu2"):
            t = probe[tap].sel(epoch=epoch).values.astype(np.float64)
            i_xt, i_ty = expected_plane(x, t, labels, ridge=0.05)
            stored = written.sel(epoch=epoch, tap=tap)
            np.testing.assert_allclose(float(stored["I_XT"]), i_xt, rtol=1e-9)
            np.testing.assert_allclose(float(stored["I_TY"]), i_ty, rtol=1e-9)
    assert written["I_XT"].attrs["units"] == "nats" and written["I_XT"].attrs["long_name"]
    assert written.attrs["estimator"] == "gauss_test" and written.attrs["unit"] == "nats"
    assert written.attrs["options"] == {"ridge": 0.05}
    assert written.attrs["infoshape_version"] == infoshape.__version__
    assert written.attrs["n_samples"] == N_PROBE
    xr.testing.assert_allclose(result[["I_XT", "I_TY"]], written[["I_XT", "I_TY"]])
    assert np.all(written["I_TY"].values <= written["I_XT"].values + 1.0)  # plausible sizes
    # infoshape.open_store shows the new group too, lazily
    lazy = infoshape.open_store(store)["analysis/gauss_test"].to_dataset()
    np.testing.assert_array_equal(lazy["I_XT"].values, written["I_XT"].values)


def test_rerun_replaces_and_names_keep_analyses_apart(store):
    analyze(store, GAUSS)
    analyze(store, GAUSS, taps=["relu2"], epochs=[0, 2], ridge=0.5)
    analyze(store, GAUSS, name="gauss_wide", ridge=1.0)
    tree = xr.open_datatree(store, engine="zarr")
    assert set(tree["analysis"].children) == {"gauss_test", "gauss_wide"}
    replaced = tree["analysis/gauss_test"].to_dataset()
    assert replaced.sizes == {"epoch": 2, "tap": 1, "sample": N_PROBE}
    assert list(replaced["epoch"].values) == [0, 2] and replaced.attrs["options"] == {"ridge": 0.5}
    assert tree["analysis"].attrs["description"]  # the parent group is kept
    assert tree["analysis/gauss_wide"].to_dataset().sizes["epoch"] == EPOCHS


def test_epoch_slices_select_by_position(store):
    assert list(analyze(store, GAUSS, epochs=slice(-1, None))["epoch"].values) == [EPOCHS - 1]
    assert list(analyze(store, GAUSS, epochs=slice(None, None, 2))["epoch"].values) == [0, 2]


def test_max_samples_draws_a_seeded_recorded_subset(store):
    result = analyze(store, GAUSS, taps=["relu1"], max_samples=20, seed=4)
    again = analyze(store, GAUSS, taps=["relu1"], max_samples=20, seed=4, name="again")
    used = result["sample"].values
    assert used.size == 20 and np.all(np.diff(used) > 0)
    np.testing.assert_array_equal(used, again["sample"].values)
    probe = xr.open_datatree(store, engine="zarr")["probe"].to_dataset().sel(sample=used)
    t = probe["relu1"].sel(epoch=1).values.astype(np.float64)
    x = probe["input"].values.astype(np.float64)
    expected = expected_plane(x, t, probe["label"].values, ridge=1e-2)
    np.testing.assert_allclose(result["I_XT"].sel(epoch=1, tap="relu1"), expected[0], rtol=1e-9)
    written = xr.open_datatree(store, engine="zarr")["analysis/gauss_test"].to_dataset()
    assert written.attrs["max_samples"] == 20 and written.attrs["seed"] == 4
    np.testing.assert_array_equal(written["sample"].values, used)
    other = analyze(store, GAUSS, taps=["relu1"], max_samples=20, seed=5)
    assert not np.array_equal(other["sample"].values, used)


def test_reads_one_epoch_tap_slab_at_a_time(store, monkeypatch):
    """Memory stays bounded by one slab: no read of a tap array exceeds one (epoch, tap) slab."""
    reads: list[tuple[str, int]] = []
    original = zarr.Array.__getitem__

    def recording(self, selection):
        value = original(self, selection)
        reads.append((self.basename, int(np.size(value))))
        return value

    monkeypatch.setattr(zarr.Array, "__getitem__", recording)
    calls: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []

    def shapes(x, t, labels):
        assert x.dtype == t.dtype == torch.float64 and labels.dtype == torch.int64
        calls.append((tuple(x.shape), tuple(t.shape), tuple(labels.shape)))
        return torch.tensor(0.0), torch.tensor(0.0)

    analyze(store, Estimator(name="shapes", function=shapes, information_plane=shapes))
    units = {"relu1": 16, "relu2": 16}
    assert calls == [((N_PROBE, 8), (N_PROBE, 16), (N_PROBE,))] * (EPOCHS * 2)
    tap_reads = [size for name, size in reads if name in units]
    assert len(tap_reads) >= EPOCHS * 2  # each slab read on its own ...
    assert max(tap_reads) <= N_PROBE * 16  # ... and never more than one slab at once


def test_progress_bar(store, capsys):
    analyze(store, GAUSS, progress=True)
    assert "analyze gauss_test" in capsys.readouterr().err


def test_unknown_tap_lists_the_stored_ones(store):
    with pytest.raises(UnknownNameError) as info:
        analyze(store, GAUSS, taps=["relu3"])
    message = str(info.value)
    assert "unknown tap 'relu3'" in message and "did you mean" in message
    assert "expected: one of relu1, relu2" in message


def test_unknown_estimator_name(store):
    with pytest.raises(UnknownNameError, match="unknown estimator 'no_such_estimator'"):
        analyze(store, "no_such_estimator")


def test_estimator_without_information_plane(store):
    plain = Estimator(name="entropy_only", function=lambda z: z.sum())
    with pytest.raises(ConfigError) as info:
        analyze(store, plain)
    message = str(info.value)
    assert "'entropy_only' cannot place a layer on the information plane" in message
    assert "information_plane(x, t, labels)" in message and "fix: choose one of" in message


def test_unknown_option_and_epoch(store):
    with pytest.raises(ConfigError, match=r"no option 'rigde'(.|\n)*expected: one of ridge"):
        analyze(store, GAUSS, rigde=0.1)
    with pytest.raises(ConfigError, match=r"epoch 7 is not in the store(.|\n)*0\.\.2"):
        analyze(store, GAUSS, epochs=[0, 7])
    with pytest.raises(ConfigError, match="cannot name the analysis group"):
        analyze(store, GAUSS, name="a/b")


def test_failing_estimator_names_tap_and_epoch(store):
    def broken(x, t, labels):
        raise np.linalg.LinAlgError("singular matrix")

    with pytest.raises(PluginError, match=r"'broken' failed on tap 'relu1' at epoch 0.*singular"):
        analyze(store, Estimator(name="broken", function=broken, information_plane=broken))


def test_store_without_probe_data(tmp_path):
    path = _write_run(tmp_path / "noprobe.zarr", probe=False)
    with pytest.raises(StoreError) as info:
        analyze(path, GAUSS)
    message = str(info.value)
    assert "holds no probe data" in message and "--no-probe" in message
    assert not (path / "analysis" / "gauss_test").exists()


def test_estimator_found_by_name_through_an_entry_point(store, fake_distribution):
    fake_distribution(
        "gaussplug",
        {"gauss_plugin_test": "gauss_plugin_test:Plugin"},
        {
            "gauss_plugin_test": """
                import torch
                from infoshape import Estimator, hookimpl

                def plane(x, t, labels):
                    return x.mean() * 0 + 1.5, torch.tensor(0.25)

                class Plugin:
                    @hookimpl
                    def infoshape_estimators(self):
                        return [Estimator(name="const_plane", function=plane, unit="bits",
                                          information_plane=plane)]
            """
        },
    )
    result = analyze(store, "const_plane")
    assert result.attrs["unit"] == "bits" and np.all(result["I_XT"].values == 1.5)
    written = xr.open_datatree(store, engine="zarr")["analysis/const_plane"].to_dataset()
    assert written["I_TY"].attrs["units"] == "bits"


@pytest.mark.parametrize("name", ["kl_pairwise", "binning"])
def test_shipped_estimators_place_the_run_on_the_plane(store, name):
    result = analyze(store, name, max_samples=30)
    assert result["I_XT"].shape == (EPOCHS, 2)
    assert np.all(np.isfinite(result["I_XT"].values)) and np.all(result["I_TY"].values >= -1e-6)


def test_parse_epochs_and_format_results(store):
    assert parse_epochs(None) is None
    assert parse_epochs(["0", "5"]) == [0, 5]
    assert parse_epochs(["::2"]) == slice(None, None, 2)
    assert parse_epochs(["-1:"]) == slice(-1, None)
    for bad in (["a"], ["1:2:3:4"], ["0", "::2"]):
        with pytest.raises(ConfigError, match="cannot read --epochs"):
            parse_epochs(bad)
    result = analyze(store, GAUSS, ridge=0.1)
    text = format_results(result)
    head = f"estimator gauss_test (ridge=0.1), {N_PROBE} probe samples, H(Y) = "
    assert text.splitlines()[0] == head + f"{result.attrs['H_Y']:.4f}"
    assert "I(X;T) [nats]" in text and "relu2" in text and "assumption flags" not in text


def test_gaussian_on_a_deterministic_layer_is_capped_flagged_and_warned_once(store):
    # 45 probe samples, 3 classes: about 15 per class against 16-unit ReLU layers. Before
    # the fix I(T;Y) was 13.5 nats for H(Y) = 1.07 and nothing told the user.
    with pytest.warns(EstimatorAssumptionWarning) as record:
        result = analyze(store, "gaussian")
    summaries = [w.message for w in record if isinstance(w.message, EstimatorAssumptionWarning)]
    assert sorted(w.condition for w in summaries) == ["exceeds_h_y", "ridge_dominated"]
    assert all("6 of 6 (epoch, tap) points" in str(w) for w in summaries)
    h_y = result.attrs["H_Y"]
    labels = xr.open_datatree(store, engine="zarr")["probe"]["label"].values
    p = np.unique(labels, return_counts=True)[1] / labels.size
    assert h_y == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-12)
    assert np.all(result["I_TY"].values <= h_y + 1e-12)
    points = [[e, t] for e in range(EPOCHS) for t in ("relu1", "relu2")]
    written = xr.open_datatree(store, engine="zarr")["analysis/gaussian"].to_dataset()
    assert written.attrs["assumption_flags"] == {"ridge_dominated": points, "exceeds_h_y": points}
    assert written["flags"].dims == ("epoch", "tap")
    assert set(written["flags"].values.ravel().tolist()) == {"ridge_dominated,exceeds_h_y"}
    assert "assumption flags" in format_results(result)


def test_flags_name_only_the_points_warned_of_and_other_warnings_pass(store):
    calls = []

    def plane(x, t, labels):
        calls.append(1)
        if len(calls) % 2 == 0:  # slabs run epoch by epoch, relu1 then relu2: relu2 only
            warning = EstimatorAssumptionWarning("picky", "too_wide", "wide", got="16")
            warnings.warn(warning, stacklevel=2)
        warnings.warn("an unrelated warning", DeprecationWarning, stacklevel=2)
        return torch.tensor(1.0), torch.tensor(0.5)

    picky = Estimator(name="picky", function=plane, information_plane=plane)
    with pytest.warns(EstimatorAssumptionWarning, match="3 of 6") as record:
        result = analyze(store, picky)
    assert sum(w.category is DeprecationWarning for w in record) >= 1  # passed through
    assert result.attrs["assumption_flags"] == {"too_wide": [[e, "relu2"] for e in range(EPOCHS)]}
    assert result["flags"].sel(tap="relu1").values.tolist() == [""] * EPOCHS
    with warnings.catch_warnings():
        warnings.simplefilter("error", EstimatorAssumptionWarning)
        clean = analyze(store, GAUSS)
    assert clean.attrs["assumption_flags"] == {} and set(clean["flags"].values.ravel()) == {""}
