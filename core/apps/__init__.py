"""The applications built on the runtime: what the ``infoshape`` command runs.

- :mod:`infoshape.apps.cli`: the one command line (``infoshape train | analyze | sweep |
  report | plugins | datasets``; ``python -m infoshape`` runs it too).
- :mod:`infoshape.apps.trainer`: the built-in training loop (``infoshape train``).
- :mod:`infoshape.apps.models`: the model zoo the trainer builds.
- :mod:`infoshape.apps.sweep`: grids of training runs and their summary (``infoshape sweep``).
- :mod:`infoshape.apps.analysis`: estimators applied to a stored run (``infoshape analyze``).
- :mod:`infoshape.apps.report`: plots of a run (``infoshape report``).
- :mod:`infoshape.apps.lightning`: the PyTorch Lightning callback.

Applications import the runtime, the store and the math; nothing below them imports an
application. Each is imported on first use (``infoshape --help`` stays light).
"""

__all__: list[str] = []
