"""A plugin whose default choice of layers could come up empty says what it chose (issue 17).

Each plugin runs one real session step with its default options on the small test MLP
(``fc1``, ``relu1``, ``fc2``, ``relu2``, ``fc3``) and must log, at INFO on its own module's
logger (``infoshape.plugins...``), the modules it picked. Given explicit layers, it says
nothing at INFO.
"""

from __future__ import annotations

import logging

import pytest
import torch

from infoshape import Session
from infoshape.testing import small_mlp

#: plugin -> (its logger, the words of the INFO record naming the choice)
CHOICES = {
    "information_dropout": (
        "infoshape.plugins.information_dropout",
        ["no layers given", "ReLU/Softplus", "relu1, relu2"],
    ),
    "shade": ("infoshape.plugins.shade.plugin", ["input of every nn.ReLU", "relu1, relu2"]),
    "irnn": ("infoshape.plugins.irnn", ["last nn.Linear, fc3", "3 classes x 16 features"]),
    "cr": ("infoshape.plugins.choi_rhee.regularizers", ["cr:", "last activation", "relu2"]),
    "cw_vr": ("infoshape.plugins.choi_rhee.regularizers", ["cw_vr:", "relu2"]),
    "characteristics": ("infoshape.plugins.characteristics", ["last hidden layer, relu2"]),
    "mi_ce": ("infoshape.plugins.mi_ce", ["input_module", "first leaf module, fc1"]),
    "l2w": ("infoshape.plugins.weight_decay", ["l2w: penalizing 3 parameter tensors", "no biases"]),
    "renyi": ("infoshape.plugins.renyi", ["renyi: no layers given; no epoch metrics"]),
    "kl_pairwise": ("infoshape.plugins.kl_pairwise", ["kl_pairwise: no layers given"]),
    "binning": ("infoshape.plugins.binning", ["binning: no layers given"]),
}
EXPLICIT = {
    "information_dropout": {"layers": ["relu1"]},
    "shade": {"layers": ["relu1"]},
    "irnn": {"classifier": "fc3"},
    "cr": {"layers": ["relu1"]},
    "characteristics": {"layers": ["relu1"]},
    "mi_ce": {"input_module": "fc1"},
    "renyi": {"layers": ["relu1"]},
    "kl_pairwise": {"layers": ["relu1"]},
}


def one_step(plugin: str, options: dict | None = None) -> None:
    torch.manual_seed(0)
    model = small_mlp((8,), n_classes=3, hidden=16)
    x, y = torch.randn(12, 8), torch.arange(12) % 3
    with Session(model, plugins=[plugin], options={plugin: options or {}}, n_train=12) as s:
        s.loss(s.model(x), y).backward()
        s.step_end()


@pytest.mark.parametrize("plugin", sorted(CHOICES))
def test_the_default_choice_is_logged(plugin, caplog):
    name, words = CHOICES[plugin]
    with caplog.at_level(logging.INFO, logger="infoshape"):
        one_step(plugin)
    records = [r for r in caplog.records if r.name == name and r.levelno == logging.INFO]
    assert records, f"{plugin} logged nothing at INFO on {name}: {caplog.text}"
    message = records[0].getMessage()
    missing = [w for w in words if w not in message]
    assert not missing, f"{plugin}'s record {message!r} lacks {missing}"


@pytest.mark.parametrize("plugin", sorted(EXPLICIT))
def test_explicit_layers_log_nothing_at_info(plugin, caplog):
    with caplog.at_level(logging.INFO, logger="infoshape"):
        one_step(plugin, EXPLICIT[plugin])
    own = CHOICES[plugin][0]
    said = [r.getMessage() for r in caplog.records if r.name == own and r.levelno >= logging.INFO]
    assert said == [], said
