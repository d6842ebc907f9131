"""Loading plugins: entry points, objects, and precise failures."""

from __future__ import annotations

import attrs
import pytest

import infoshape
from infoshape import PluginLoadError, build_plugin_manager, hookimpl


def test_first_party_plugins_are_entry_points():
    manager = build_plugin_manager(enable=["csv", "tensorboard", "builtin_datasets"])
    assert set(manager.infos) == {"csv", "tensorboard", "builtin_datasets"}
    assert manager.infos["csv"].distribution == "infoshape"
    assert "infoshape_sinks" in manager.infos["csv"].hooks


def test_objects_modules_and_classes_register():
    import types

    module = types.ModuleType("my_module_plugin")

    @hookimpl
    def infoshape_taps(session):
        return []

    module.infoshape_taps = infoshape_taps

    class ClassPlugin:
        @hookimpl
        def infoshape_taps(self, session):
            return []

    manager = build_plugin_manager(enable=[module, ClassPlugin])
    assert set(manager.infos) == {"my_module_plugin", "classplugin"}
    # a class is instantiated: two managers hold two distinct instances
    other = build_plugin_manager(enable=[ClassPlugin])
    assert isinstance(manager.infos["classplugin"].plugin, ClassPlugin)
    assert other.infos["classplugin"].plugin is not manager.infos["classplugin"].plugin


def test_unknown_plugin_names_close_matches():
    with pytest.raises(PluginLoadError) as info:
        build_plugin_manager(enable=["cvs"])
    message = str(info.value)
    assert "'cvs'" in message and "is not installed" in message
    assert "did you mean 'csv'" in message


def test_misspelled_hook_in_entry_point_plugin(fake_distribution):
    fake_distribution(
        "misspelled",
        {"misspelled": "misspelled_plugin"},
        {
            "misspelled_plugin": """
                from infoshape import hookimpl

                @hookimpl
                def infoshape_penalties(session, captures, outputs, targets):
                    return []
            """
        },
    )
    with pytest.raises(PluginLoadError) as info:
        build_plugin_manager(enable=["misspelled"])
    message = str(info.value)
    assert "plugin 'misspelled'" in message
    assert "'infoshape_penalties', which is no infoshape hook" in message
    assert "fix: rename it to 'infoshape_penalty'" in message
    assert info.value.plugin == "misspelled"


def test_missing_import_in_entry_point_plugin(fake_distribution):
    fake_distribution(
        "needsdep",
        {"needsdep": "needsdep_plugin:Plugin"},
        {"needsdep_plugin": "import a_package_that_is_not_installed_xyz\nclass Plugin: ...\n"},
    )
    with pytest.raises(PluginLoadError) as info:
        build_plugin_manager(enable=["needsdep"])
    message = str(info.value)
    assert "plugin 'needsdep'" in message
    assert "cannot be imported" in message
    assert "install the missing package ('a_package_that_is_not_installed_xyz')" in message


def test_broken_unrelated_plugin_only_warns(fake_distribution):
    fake_distribution(
        "brokenextra",
        {"brokenextra": "brokenextra_plugin"},
        {"brokenextra_plugin": "raise RuntimeError('boom at import')\n"},
    )
    with pytest.warns(RuntimeWarning, match="skipping a broken plugin.*brokenextra.*boom"):
        manager = build_plugin_manager()
    assert "brokenextra" not in manager.infos
    assert "csv" in manager.infos


def test_hook_with_unknown_argument_is_refused():
    class BadArgs:
        @hookimpl
        def infoshape_taps(self, session, not_an_argument):
            return []

    with pytest.raises(PluginLoadError, match="does not match its specification"):
        build_plugin_manager(enable=[BadArgs])


def test_same_plugin_twice_is_refused():
    with pytest.raises(PluginLoadError, match="enabled twice"):
        build_plugin_manager(enable=["csv", "csv"])


@attrs.frozen(kw_only=True)
class _Config:
    beta: float = attrs.field(default=0.1, validator=attrs.validators.gt(0))
    mode: str = "exp"


class _WithOptions:
    name = "with_options"
    Config = _Config

    @hookimpl
    def infoshape_configure(self, config):
        self.config = config


def test_wrong_option_type_names_plugin_option_and_fix(mlp):
    with pytest.raises(PluginLoadError) as info:
        infoshape.Session(mlp, plugins=[_WithOptions], options={"with_options": {"beta": "big"}})
    message = str(info.value)
    assert "plugin 'with_options': option 'beta' has the wrong type" in message
    assert "expected: float" in message and "got: 'big' (str)" in message
    assert "fix: give beta a value of type float" in message


def test_unknown_option_lists_valid_ones(mlp):
    with pytest.raises(PluginLoadError) as info:
        infoshape.Session(mlp, plugins=[_WithOptions], options={"with_options": {"bta": 1.0}})
    assert "unknown option 'bta'" in str(info.value)
    assert "options among: beta, mode" in str(info.value)


def test_validator_refusal_is_reported(mlp):
    with pytest.raises(PluginLoadError, match=r"an option was refused.*beta"):
        infoshape.Session(mlp, plugins=[_WithOptions], options={"with_options": {"beta": -1.0}})


def test_int_is_accepted_for_float_and_config_reaches_plugin(mlp):
    with infoshape.Session(
        mlp, plugins=[_WithOptions], options={"with_options": {"beta": 2}}
    ) as session:
        plugin = session.plugins["with_options"].plugin
        assert plugin.config == _Config(beta=2.0)
        assert isinstance(plugin.config.beta, float)
        assert session.config_of("with_options") is plugin.config


def test_options_for_a_plugin_not_enabled(mlp):
    with pytest.raises(PluginLoadError, match="has options but is not enabled"):
        infoshape.Session(mlp, plugins=[], options={"shade": {"beta": 0.1}})
