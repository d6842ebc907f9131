"""Smoke test of examples/transformers_example.py: ``--quick`` fine-tunes the tiny BERT."""

from __future__ import annotations

import json
import math

import pytest

import infoshape

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("hf_trainer_without_shadowed_datasets")


def test_quick_run_writes_the_store_and_summary(tmp_path, script):
    summary = script.main(["--quick", "--out", str(tmp_path)])
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert all(math.isfinite(v) for v in summary.values())
    assert summary["penalty_cr_last"] > 0 and summary["I_TX_last_layer"] >= 0
    tree = infoshape.open_store(tmp_path / "run.zarr")
    probe = tree["probe"].to_dataset()
    for layer in script.LAYERS:
        assert probe[layer].dims == ("epoch", "sample", f"{layer}_unit")
        assert probe[layer].shape == (1, 128, 32)
    assert "penalty.cr" in tree["metrics"].to_dataset()
