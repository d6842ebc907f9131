"""``infoshape.Plugin``: the kept config and session, declared states saved, restored, moved."""

from __future__ import annotations

import attrs
import pytest
import torch
from torch import nn

import infoshape
from infoshape.errors import ConfigError, PluginLoadError
from infoshape.plugin import EstimatorPlugin, Plugin


class _Counter(infoshape.Plugin):
    """Counts steps in a declared tensor, and per-key sums in a declared dict of tensors."""

    name = "counter"

    @attrs.frozen(kw_only=True)
    class Config:
        """One option."""

        step: float = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", torch.zeros(2))
        self.add_state("per_key", {})

    @infoshape.hookimpl
    def infoshape_step_end(self) -> None:
        """Count."""
        self.count += self.config.step
        self.per_key["a"] = self.per_key.get("a", torch.zeros(())) + 1.0


def test_configure_keeps_the_validated_options_and_the_session():
    with infoshape.Session(
        nn.Linear(2, 2), plugins=[_Counter], options={"counter": {"step": 2}}
    ) as s:
        plugin = s.plugins["counter"].plugin
        assert plugin.config == _Counter.Config(step=2.0)
        assert plugin.session is s
    plugin = _Counter()
    plugin.infoshape_configure(_Counter.Config(step=3.0))  # a direct call may leave session out
    assert plugin.config.step == 3.0 and plugin.session is None


def test_unknown_option_of_a_plugin_without_options_is_refused():
    class _Bare(Plugin):
        """No options."""

        name = "bare"

    with pytest.raises(PluginLoadError, match="unknown option 'x'"):
        infoshape.Session(nn.Linear(2, 2), plugins=[_Bare], options={"bare": {"x": 1}})


def test_declared_states_round_trip_through_the_session_state_dict():
    with infoshape.Session(nn.Linear(2, 2), plugins=[_Counter]) as s:
        assert s.state_dict()["plugins"]["counter"].keys() == {"count"}  # empty dict left out
        s.step_end()
        s.step_end()
        state = s.state_dict()
        live = s.plugins["counter"].plugin
        live.count += 10  # the saved state is a copy
    saved = state["plugins"]["counter"]
    assert torch.equal(saved["count"], torch.full((2,), 2.0))
    assert torch.equal(saved["per_key"]["a"], torch.tensor(2.0))
    with infoshape.Session(nn.Linear(2, 2), plugins=[_Counter]) as resumed:
        resumed.load_state_dict(state)
        plugin = resumed.plugins["counter"].plugin
        assert torch.equal(plugin.count, torch.full((2,), 2.0))
        resumed.step_end()
        assert torch.equal(plugin.count, torch.full((2,), 3.0))
        assert torch.equal(plugin.per_key["a"], torch.tensor(3.0))


def test_a_plugin_without_states_saves_nothing():
    class _Stateless(Plugin):
        """Nothing to save."""

        name = "stateless"

    with infoshape.Session(nn.Linear(2, 2), plugins=[_Stateless, _Counter]) as s:
        assert "stateless" not in s.state_dict()["plugins"]
        hooks = {name: info.hooks for name, info in s.plugins.items()}
    assert hooks["stateless"] == ["infoshape_configure"]  # state hooks only with states
    assert {"infoshape_state_dict", "infoshape_load_state_dict"} <= set(hooks["counter"])


def test_reset_and_to_move_every_declared_state():
    plugin = _Counter()
    plugin.count += 5
    plugin.per_key["a"] = torch.ones(3)
    plugin.to(dtype=torch.float64)
    assert plugin.count.dtype == torch.float64 and plugin.per_key["a"].dtype == torch.float64
    plugin.load_state_dict({"count": torch.ones(2)}, map_location="cpu")
    assert torch.equal(plugin.count, torch.ones(2)) and plugin.per_key == {}
    plugin.reset_states()
    assert torch.equal(plugin.count, torch.zeros(2))


def test_add_state_refuses_a_taken_name_and_a_non_tensor():
    plugin = _Counter()
    with pytest.raises(ConfigError, match="declared twice"):
        plugin.add_state("count", torch.zeros(1))
    with pytest.raises(ConfigError, match="hides an attribute"):
        plugin.add_state("state_dict", torch.zeros(1))
    with pytest.raises(ConfigError, match="wrong kind"):
        plugin.add_state("n", 3)


def test_an_override_marked_as_hook_replaces_the_base_one():
    class _Own(Plugin):
        """Configures itself."""

        name = "own"
        seen = None

        @infoshape.hookimpl
        def infoshape_configure(self, config, session):
            """Keep both, and note it."""
            super().infoshape_configure(config, session)
            self.seen = "own"

    with infoshape.Session(nn.Linear(2, 2), plugins=[_Own]) as s:
        plugin = s.plugins["own"].plugin
        assert plugin.seen == "own" and plugin.session is s


def test_first_party_plugins_use_the_base():
    from infoshape.plugins.binning import Binning
    from infoshape.plugins.shade import Shade, ShadeBinary

    assert issubclass(Shade, Plugin) and issubclass(ShadeBinary, Plugin)
    assert issubclass(Binning, EstimatorPlugin) and Shade.weight_option == "beta"
