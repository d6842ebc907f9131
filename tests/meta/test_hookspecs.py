"""Every hook specification is documented, named in a test, and called by a real run."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

import infoshape
from infoshape import hookspecs

TESTS = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("infoshape_"))

RECORDER = """
import torch
from infoshape import DatasetSpec, Estimator, Penalty, Tap, hookimpl

CALLS = []


class RecordingSink:
    def write(self, stage, index, metrics):
        CALLS.append(("sink.write", stage))

    def close(self):
        CALLS.append(("sink.close", None))


class Recorder:
    name = "recorder"

    @hookimpl
    def infoshape_configure(self, session, config):
        CALLS.append(("infoshape_configure", config))

    @hookimpl
    def infoshape_wrap_model(self, session, model):
        CALLS.append(("infoshape_wrap_model", type(model).__name__))

    @hookimpl
    def infoshape_taps(self, session):
        CALLS.append(("infoshape_taps", None))
        self.tap = Tap("fc1")
        return [self.tap]

    @hookimpl
    def infoshape_objective(self, session, outputs, targets):
        CALLS.append(("infoshape_objective", tuple(outputs.shape)))

    @hookimpl
    def infoshape_penalty(self, session, captures, outputs, targets):
        CALLS.append(("infoshape_penalty", sorted(captures)))
        return [Penalty("recorder", captures["fc1"].pow(2).mean(), 0.0)]

    @hookimpl
    def infoshape_metrics(self, session, captures, outputs, targets, stage):
        CALLS.append(("infoshape_metrics", stage))
        return {"recorder.captures": len(captures)}

    @hookimpl
    def infoshape_estimators(self):
        CALLS.append(("infoshape_estimators", None))
        return [Estimator(name="recorder_mean", function=torch.mean)]

    @hookimpl
    def infoshape_datasets(self):
        CALLS.append(("infoshape_datasets", None))
        return [DatasetSpec(name="recorder_data", load=lambda split, root: [], n_classes=2,
                            input_shape=(8,))]

    @hookimpl
    def infoshape_sinks(self, session):
        CALLS.append(("infoshape_sinks", None))
        return [RecordingSink()]

    @hookimpl
    def infoshape_step_end(self, session, step):
        CALLS.append(("infoshape_step_end", step))

    @hookimpl
    def infoshape_epoch_end(self, session, epoch):
        CALLS.append(("infoshape_epoch_end", epoch))

    @hookimpl
    def infoshape_state_dict(self, session):
        CALLS.append(("infoshape_state_dict", None))
        return {"calls": len(CALLS)}

    @hookimpl
    def infoshape_load_state_dict(self, session, state):
        CALLS.append(("infoshape_load_state_dict", state["calls"]))

    @hookimpl
    def infoshape_session_end(self, session):
        CALLS.append(("infoshape_session_end", None))
"""


def test_hookspecs_are_found():
    manager = infoshape.build_plugin_manager(enable=[])
    assert sorted(n for n in dir(manager.hook) if n.startswith("infoshape_")) == HOOKS
    assert len(HOOKS) >= 12


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_is_marked_and_documented(name):
    spec = getattr(hookspecs, name)
    assert getattr(spec, f"{hookspecs.PROJECT}_spec", None) is not None, f"{name} lacks @hookspec"
    doc = inspect.getdoc(spec) or ""
    assert len(doc.split()) >= 5, f"{name} has no (or a too short) docstring"


def test_every_hookspec_is_named_in_a_test_outside_meta():
    text = "\n".join(
        path.read_text(encoding="utf-8")
        for path in TESTS.rglob("*.py")
        if "meta" not in path.relative_to(TESTS).parts
    )
    missing = [name for name in HOOKS if name not in text]
    assert missing == [], f"hookspecs no test names (outside tests/meta): {missing}"


def test_every_hookspec_is_called_in_a_real_run(fake_distribution, make_mlp, batch):
    fake_distribution(
        "recorder-dist", {"recorder": "recorder_plugin:Recorder"}, {"recorder_plugin": RECORDER}
    )
    x, y = batch
    with infoshape.Session(make_mlp(), plugins=["recorder"]) as session:
        opt = torch.optim.SGD(session.model.parameters(), lr=0.1)
        for _ in range(2):
            loss = session.loss(session.model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            session.step_end()
        session.epoch_end(probe=(x, y))
        session.load_state_dict(session.state_dict())
    assert "recorder_mean" in {e.name for e in infoshape.list_estimators()}
    assert infoshape.get_dataset("recorder_data").n_classes == 2

    calls = sys.modules["recorder_plugin"].CALLS
    called = {name for name, _ in calls}
    assert [h for h in HOOKS if h not in called] == []
    assert ("infoshape_metrics", "step") in calls and ("infoshape_metrics", "epoch") in calls
    assert [arg for name, arg in calls if name == "infoshape_step_end"] == [0, 1]
    assert ("sink.write", "epoch") in calls and ("sink.close", None) in calls
    assert calls[0][0] == "infoshape_configure"
    assert [name for name, _ in calls if name.startswith("infoshape_")].index(
        "infoshape_session_end"
    ) > 0


def test_help_shows_every_hook_specification():
    """``help(infoshape.hookspecs)`` lists each hook the plugin manager knows, with its doc."""
    import pydoc

    from infoshape.plugin_manager import build_plugin_manager

    page = pydoc.render_doc(hookspecs, renderer=pydoc.plaintext)
    known = sorted(build_plugin_manager(enable=[]).hook.__dict__)
    assert set(known) == set(HOOKS), (known, HOOKS)
    missing = [name for name in known if f"{name}(" not in page]
    assert not missing, f"help(infoshape.hookspecs) does not show {missing}"
    for name in known:  # each with the first line of its docstring
        first = inspect.getdoc(getattr(hookspecs, name)).splitlines()[0]
        assert first in page, f"{name}'s docstring is not in help(infoshape.hookspecs)"
