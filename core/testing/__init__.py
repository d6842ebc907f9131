"""Testing helpers for infoshape and its plugins (public, like ``xarray.testing``).

Hypothesis strategies for the tensors plugins see (:mod:`infoshape.testing.strategies`),
and the plugin conformance kit (:mod:`infoshape.testing.plugin_tester`, its checks in
:mod:`infoshape.testing.conformance`)::

    from hypothesis import given
    from infoshape.testing import PluginTester, activations, activations_and_labels

    @given(activations(shape=(32, 8), nonnegative=True))
    def test_entropy_is_nonnegative(t): ...

    def test_conformance():
        PluginTester(MyPlugin, options={"beta": 0.1}).check_all()
"""

from infoshape.testing.check_report import CheckReport, CheckResult
from infoshape.testing.host_syncs import HOST_SYNC_METHODS, count_host_syncs
from infoshape.testing.plugin_tester import PluginTester, small_mlp
from infoshape.testing.strategies import activations, activations_and_labels, labels

__all__ = [
    "HOST_SYNC_METHODS",
    "CheckReport",
    "CheckResult",
    "PluginTester",
    "activations",
    "activations_and_labels",
    "count_host_syncs",
    "labels",
    "small_mlp",
]
