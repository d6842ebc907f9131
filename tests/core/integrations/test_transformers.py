"""The Hugging Face Trainer integration, on a tiny BERT built from a config (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import infoshape

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from infoshape.integrations.transformers import (  # noqa: E402
    STATE_FILE,
    InfoshapeArguments,
    InfoshapeTrainer,
    reduce_tokens,
)

pytestmark = pytest.mark.usefixtures("hf_trainer_without_shadowed_datasets")

VOCAB, SEQ, PAD = 100, 12, 0
TAPS = ["bert.encoder.layer.*.output"]


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of random tokens; label 1 when token 7 occurs; random padding at the end."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(4, SEQ + 1, (n,), generator=g)
    mask = torch.arange(SEQ)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, PAD)
    labels = ((ids == 7) | (ids == 8)).any(1).long()
    return ids, mask.long(), labels


class _Set(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.ids, self.mask, self.labels = _data(n, seed)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        pad_token_id=PAD,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def _trainer(tmp_path, store, max_steps, accumulation=1, model=None) -> InfoshapeTrainer:
    probe_ids, _, probe_labels = _data(24, seed=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return InfoshapeTrainer(
        model=model or _model(),
        args=args,
        train_dataset=_Set(64, seed=0),
        eval_dataset=_Set(16, seed=1),
        infoshape=InfoshapeArguments(
            plugins=["cr"],
            options={"cr": {"layers": ["bert.encoder.layer.1.output"], "coefficient": 0.1}},
            taps=TAPS,
            reduce="mean",
            store=store,
            probe=(probe_ids, probe_labels),
        ),
    )


def test_reduce_tokens_masks_padding():
    t = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(reduce_tokens(t, mask, "cls"), t[:, 0])
    assert torch.allclose(reduce_tokens(t, mask, "mean"), torch.stack([t[0, :2].mean(0), t[1, 0]]))
    assert torch.equal(reduce_tokens(t, mask, "tokens"), torch.stack([t[0, 0], t[0, 1], t[1, 0]]))


def test_trainer_adds_the_penalty_stores_probes_and_resumes(tmp_path):
    store = tmp_path / "bert.zarr"
    trainer = _trainer(tmp_path, store, max_steps=4, accumulation=2)
    model = trainer.model
    trainer.train()

    # the penalty is in the Trainer's logged loss components
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("penalty.cr" in e and "loss.objective" in e for e in logged)
    assert all(e["penalty.cr"] > 0 for e in logged)
    # with 2 accumulated micro-batches the Trainer's loss is still objective + 0.1 * penalty
    # (the mean over micro-batches: not doubled, so the loss was divided by the accumulation)
    for e in logged:
        assert e["loss"] == pytest.approx(e["loss.objective"] + 0.1 * e["penalty.cr"], abs=2e-4)
    # the model is restored: no hook left
    assert trainer.model is model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    tree = infoshape.open_store(store)
    metrics = tree["metrics"].to_dataset()
    # 4 optimizer steps x 2 micro-batches = 8 session steps, each with the penalty
    assert metrics["penalty.cr"].dropna("step").sizes["step"] == 8
    assert np.all(np.isfinite(metrics["penalty.cr"].dropna("step").values))
    probe = tree["probe"].to_dataset()
    layer = "bert.encoder.layer.1.output"
    assert probe[layer].dims == ("epoch", "sample", f"{layer}_unit")
    assert probe[layer].shape == (2, 24, 32)  # an evaluation every 2 steps, mean over tokens
    assert list(probe["epoch"].values) == [0, 1]

    # resume from the checkpoint at step 2: epochs continue, none duplicated
    resumed = _trainer(tmp_path, store, max_steps=6, accumulation=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert (tmp_path / "out" / "checkpoint-2" / STATE_FILE).is_file()
    probe = infoshape.open_store(store)["probe"].to_dataset()
    assert list(probe["epoch"].values) == [0, 1, 2]
    steps = infoshape.open_store(store)["metrics"].to_dataset()["step"].values
    assert list(steps) == list(range(12))


def test_probe_reduction_uses_the_padding_mask(tmp_path):
    import xarray as xr

    store = tmp_path / "cls.zarr"
    trainer = _trainer(tmp_path, store, max_steps=2)
    trainer.train()
    probe = xr.open_zarr(store, group="probe")
    stored = probe["bert.encoder.layer.0.output"].isel(epoch=-1).values
    # recompute the masked mean by hand from the restored model
    ids, _, _ = _data(24, seed=2)
    model = trainer.model.eval()
    with torch.no_grad():
        hidden = model.bert(ids, attention_mask=(ids != PAD).long(), output_hidden_states=True)
    expected = reduce_tokens(hidden.hidden_states[1], ids != PAD, "mean").numpy()
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)


def test_tokens_reduction_trains_without_probe_and_refuses_one(tmp_path):
    import attrs

    from infoshape.errors import ConfigError

    trainer = _trainer(tmp_path, None, max_steps=2)
    tokens = attrs.evolve(trainer.infoshape_args, reduce="tokens", probe=None, taps=())
    trainer.infoshape_args = tokens
    trainer.train()  # cr on every kept token of the last layer: (n_tokens, 32) rows
    assert all("penalty.cr" in e for e in trainer.state.log_history if "loss" in e)
    with pytest.raises(ConfigError, match='reduce="tokens" has no probe set'):
        InfoshapeTrainer(
            model=_model(),
            args=trainer.args,
            train_dataset=_Set(8, seed=0),
            infoshape={"plugins": ["cr"], "reduce": "tokens", "probe": (_data(4, 0)[0], [0] * 4)},
        )
