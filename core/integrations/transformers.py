"""Hugging Face Transformers integration (``pip install "infoshape[transformers]"``).

Use :class:`InfoshapeTrainer` where you used ``transformers.Trainer``::

    from infoshape.integrations.transformers import InfoshapeArguments, InfoshapeTrainer

    trainer = InfoshapeTrainer(
        model=model, args=TrainingArguments(...), train_dataset=train, eval_dataset=test,
        infoshape=InfoshapeArguments(
            plugins=["cr", "kl_pairwise"],
            options={"cr": {"layers": ["bert.encoder.layer.1.output"]},
                     "kl_pairwise": {"layers": ["bert.encoder.layer.*.output"]}},
            taps=["bert.encoder.layer.*.output"],   # stored at each evaluation
            reduce="cls", store="runs/bert.zarr", probe=(probe_ids, probe_labels)),
    )
    trainer.train()

**A Trainer subclass, not only a callback.** A ``TrainerCallback`` cannot change the
loss (callbacks get no tensor and return only control flags), so the penalties are added
in :meth:`InfoshapeTrainer.compute_loss`; the loss components reach the Trainer's logs
through :meth:`InfoshapeTrainer.log`. The lifecycle (evaluation, checkpoints) runs in a
callback the trainer adds itself. To combine with another ``Trainer`` subclass, mix
:class:`InfoshapeTrainerMixin` in before it.

What happens:

- ``train()`` opens a :class:`~infoshape.Session` on the model (``trainer.infoshape``), and
  closes it at the end (status ``"failed"`` on an exception, ``"interrupted"`` on Ctrl-C):
  every hook is removed and the model is the one passed in.
- Each training micro-batch is one session step: ``compute_loss`` runs the model without
  ``labels``, takes ``session.loss(logits, labels)`` (the objective, cross-entropy unless a
  plugin supplies one, plus every enabled plugin's weighted penalties) and calls
  ``session.step_end()``. With ``gradient_accumulation_steps=k`` the store's ``step`` counts
  micro-batches (``global_step == step // k``); the Trainer divides the loss by ``k`` as
  for its own loss. Evaluation batches get the plain objective, no penalty.
- Every Trainer log of the training loss gets the mean, over the micro-batches since the
  previous log, of ``loss.objective`` and every ``penalty.<name>``.
- At each evaluation (or at each epoch end when ``eval_strategy="no"``) the session
  closes an epoch: the probe set passes through the model, stored taps go to ``probe/``
  as ``(epoch, sample, <tap>_unit)``, epoch metrics are emitted.
- At each checkpoint the session state (step, epoch, plugin state) is saved beside it as
  ``checkpoint-N/infoshape_state.pt``; ``train(resume_from_checkpoint=...)`` loads it and
  reopens the store for appending, so epochs and steps continue without duplicates.

**Token-level representations.** Taps on a transformer block give ``(batch, seq, hidden)``
tensors. Every capture whose first two dimensions are the batch's ``(batch, seq)`` is
reduced right after the model's forward, before any plugin or the store sees it
(``reduce``):

- ``"cls"``: the first token, ``t[:, 0]`` -> ``(batch, hidden)``;
- ``"mean"``: the mean over the tokens the mask keeps -> ``(batch, hidden)``;
- ``"tokens"``: every kept token as a row -> ``(n_tokens, hidden)``; for label-free
  penalties only (``cr``, ``vr``, ``rr``, ``l1r``): rows no longer match the labels, and
  there is no probe set (it costs one host sync a forward for the boolean index).

The mask is the ``attention_mask`` the model is called with; without one (the probe pass
calls ``model(input_ids)``) it is ``input_ids != model.config.pad_token_id``, and it is passed
to the model as its ``attention_mask`` too, so probe sequences are encoded as in training.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import nn

from infoshape.capture import Tap
from infoshape.errors import ConfigError
from infoshape.probe import Probe
from infoshape.session import Session

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import TrainOutput, get_last_checkpoint
except ImportError as err:
    raise ConfigError(
        "infoshape.integrations.transformers needs Hugging Face Transformers",
        expected="the transformers package (with accelerate)",
        got=f"ImportError: {err}",
        fix="pip install 'infoshape[transformers]'",
    ) from err

__all__ = [
    "STATE_FILE",
    "InfoshapeArguments",
    "InfoshapeTrainer",
    "InfoshapeTrainerMixin",
    "TokenReduction",
    "reduce_tokens",
]

Reduce = Literal["cls", "mean", "tokens"]
#: the session state saved in each Trainer checkpoint folder
STATE_FILE = "infoshape_state.pt"


def reduce_tokens(tensor: torch.Tensor, mask: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """Reduce a ``(batch, seq, ...)`` token tensor with a ``(batch, seq)`` mask.

    Args:
        tensor: token representations, ``(batch, seq, hidden...)``.
        mask: 1 (or True) for real tokens, 0 for padding.
        reduce: ``"cls"`` (first token), ``"mean"`` (masked mean) or ``"tokens"`` (the kept
            tokens as rows).

    Returns:
        ``(batch, hidden...)`` for ``"cls"`` and ``"mean"``, ``(n_tokens, hidden...)`` for
        ``"tokens"``.
    """
    if reduce == "cls":
        return tensor[:, 0]
    keep = mask.to(tensor.device, torch.bool)
    if reduce == "tokens":
        return tensor[keep]
    weights = keep.to(tensor.dtype).reshape(*keep.shape, *([1] * (tensor.ndim - 2)))
    return (tensor * weights).sum(1) / weights.sum(1).clamp_min(1)


class TokenReduction:
    """Reduces a session's token captures after each forward of the model.

    A forward pre-hook on the model keeps the batch's mask, a forward hook (registered
    after the session's capture hooks) replaces each capture shaped ``(batch, seq, ...)``
    in ``session.captures`` by its reduction, so penalties, metrics and the probe store
    see ``(batch, hidden)`` (see the module docstring). :meth:`remove` takes both off.
    """

    def __init__(self, session: Session, model: nn.Module, reduce: Reduce) -> None:
        if reduce not in ("cls", "mean", "tokens"):
            raise ConfigError(
                "unknown token reduction",
                expected='reduce="cls", "mean" or "tokens"',
                got=repr(reduce),
                fix='reduce="cls" keeps the first token of each sequence',
            )
        self.session = session
        self.reduce: Reduce = reduce
        self.pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None)
        self._mask: torch.Tensor | None = None
        self._forward_parameters = inspect.signature(model.forward).parameters
        self._handles = [
            model.register_forward_pre_hook(self._keep_mask, with_kwargs=True),
            model.register_forward_hook(self._reduce),
        ]

    def _keep_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._mask = mask
        if mask is not None or not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            return None
        if self.pad_token_id is None:
            self._mask = torch.ones_like(ids, dtype=torch.bool)
            return None
        # called without a mask (the probe pass): mask the padding, for the model too
        self._mask = ids != self.pad_token_id
        if "attention_mask" in self._forward_parameters:
            return args, {**kwargs, "attention_mask": self._mask.long()}
        return None

    def _reduce(self, module: nn.Module, args: tuple, output: Any) -> None:
        mask, self._mask = self._mask, None
        captures = self.session.captures
        if mask is None or not isinstance(captures, MutableMapping):
            return
        for name, tensor in list(captures.items()):
            if tensor.ndim >= 3 and tuple(tensor.shape[:2]) == tuple(mask.shape):
                captures[name] = reduce_tokens(tensor, mask, self.reduce)

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


@attrs.frozen(kw_only=True)
class InfoshapeArguments:
    """What :class:`InfoshapeTrainer` runs beside the Trainer.

    Attributes:
        plugins: plugin names or objects, as for :class:`~infoshape.Session`.
        options: per-plugin options (``{"cr": {"layers": ["bert.encoder.layer.1.output"]}}``).
        store: the zarr store to write (``None``: no store).
        probe: ``(input_ids, labels)`` (or a :class:`~infoshape.Probe`) passed at each
            evaluation; padding is the config's ``pad_token_id``.
        taps: module globs (``"bert.encoder.layer.*.output"``) or :class:`~infoshape.Tap`
            records to store at each evaluation; a string stores the probe set.
        reduce: the token reduction: ``"cls"``, ``"mean"`` or ``"tokens"``.
        session_options: other :class:`~infoshape.Session` arguments (``seed``,
            ``log_every``, ``overwrite``, ``on_nonfinite`` ...).
    """

    plugins: Sequence[Any] = attrs.field(default=(), converter=tuple)
    options: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    store: str | Path | None = None
    probe: Probe | tuple | None = None
    taps: Sequence[str | Tap] = attrs.field(default=(), converter=tuple)
    reduce: Reduce = attrs.field(
        default="cls", validator=attrs.validators.in_(("cls", "mean", "tokens"))
    )
    session_options: Mapping[str, Any] = attrs.field(factory=dict)

    def tap_records(self) -> list[Tap]:
        """The taps as :class:`~infoshape.Tap` records."""
        return [t if isinstance(t, Tap) else Tap(module=t, store=True) for t in self.taps]


class _StepRows:
    """A metric sink that keeps the step rows written since the last Trainer log."""

    def __init__(self) -> None:
        self.rows: list[Mapping[str, Any]] = []

    def write(self, stage: str, index: int, metrics: Mapping[str, Any]) -> None:
        if stage == "step":
            self.rows.append(metrics)

    def close(self) -> None:
        self.rows = []

    def components(self) -> dict[str, float]:
        """The mean of the objective and of each penalty over the kept rows; forget them."""
        sums: dict[str, list[float]] = {}
        for row in self.rows:
            for name, value in row.items():
                if name == "loss.objective" or name.startswith("penalty."):
                    sums.setdefault(name, []).append(float(value))
        self.rows = []
        return {name: sum(values) / len(values) for name, values in sums.items()}


class _Lifecycle(TrainerCallback):
    """Closes a session epoch at each evaluation; saves the session state at checkpoints."""

    def __init__(self, trainer: InfoshapeTrainerMixin) -> None:
        self.trainer = trainer

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._infoshape_epoch_end()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.eval_strategy == "no":
            self.trainer._infoshape_epoch_end()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        session = self.trainer.infoshape
        if session is None or session.closed:
            return
        session.flush()  # the checkpoint never runs ahead of the store
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            torch.save(session.state_dict(), folder / _state_file(session))


def _state_file(session: Session) -> str:
    return STATE_FILE if session.world_size == 1 else f"infoshape_state_rank{session.rank}.pt"


class InfoshapeTrainerMixin:
    """Adds an infoshape session to a ``transformers.Trainer`` (see the module docstring).

    Args:
        infoshape: what to run (an :class:`InfoshapeArguments` or a dict of its fields).
        *args, **kwargs: the Trainer's own arguments.
    """

    def __init__(
        self, *args: Any, infoshape: InfoshapeArguments | Mapping[str, Any], **kwargs: Any
    ) -> None:
        self.infoshape_args = (
            infoshape
            if isinstance(infoshape, InfoshapeArguments)
            else InfoshapeArguments(**infoshape)
        )
        if self.infoshape_args.reduce == "tokens" and self.infoshape_args.probe is not None:
            raise ConfigError(
                'reduce="tokens" has no probe set',
                expected='probe=None with reduce="tokens", or reduce="cls" / "mean"',
                got="a probe set",
                fix='use reduce="mean" to store one row per probe sequence',
            )
        super().__init__(*args, **kwargs)
        self.infoshape: Session | None = None
        self._rows = _StepRows()
        self._reduction: TokenReduction | None = None
        # the loss is a per-batch mean: the Trainer divides it by the accumulation steps
        self.model_accepts_loss_kwargs = False
        trainer: Any = self  # a Trainer, through the class this mixes into
        trainer.add_callback(_Lifecycle(self))

    # ------------------------------------------------------------ lifecycle
    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> TrainOutput:
        """``Trainer.train`` with the session open (resumed from the checkpoint's state)."""
        resume = self._saved_state(resume_from_checkpoint)
        self._open(resume)
        status = "failed"
        try:
            result = super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]
            status = "complete"
            return result
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self._close(status)

    def _saved_state(self, checkpoint: str | bool | None) -> dict[str, Any] | None:
        trainer: Any = self
        if checkpoint is True:
            checkpoint = get_last_checkpoint(trainer.args.output_dir)
        if not isinstance(checkpoint, str) or not checkpoint:
            return None
        for name in (STATE_FILE, f"infoshape_state_rank{int(os.environ.get('RANK', 0))}.pt"):
            path = Path(checkpoint) / name
            if path.is_file():
                return torch.load(path, weights_only=False)
        return None

    def _open(self, resume: Mapping[str, Any] | None) -> None:
        spec = self.infoshape_args
        trainer: Any = self
        model = trainer.model
        n_train = getattr(trainer.train_dataset, "__len__", None)
        options = {"n_train": n_train() if n_train else None, **spec.session_options}
        self._original_model = model
        self.infoshape = Session(
            model,
            plugins=list(spec.plugins),
            options=dict(spec.options),
            store=spec.store,
            taps=spec.tap_records(),
            resume=resume,
            sinks=[self._rows],
            **options,
        )
        self._reduction = TokenReduction(self.infoshape, self.infoshape.module, spec.reduce)
        if self.infoshape.model is not model:  # a plugin wrapped it (infoshape_wrap_model)
            trainer.model = trainer.model_wrapped = self.infoshape.model

    def _close(self, status: str) -> None:
        if self._reduction is not None:
            self._reduction.remove()
            self._reduction = None
        if self.infoshape is not None:
            self.infoshape.close(status=status)
        trainer: Any = self
        trainer.model = trainer.model_wrapped = self._original_model

    def _infoshape_epoch_end(self) -> None:
        session = self.infoshape
        if session is not None and not session.closed:
            session.epoch_end(probe=self.infoshape_args.probe)

    # ------------------------------------------------------------ the loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Training: the objective plus every plugin's penalties; evaluation: the Trainer's."""
        session = self.infoshape
        if session is None or session.closed or not model.training or "labels" not in inputs:
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        loss = session.loss(logits, labels)
        session.step_end()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """``Trainer.log``, with ``loss.objective`` and each ``penalty.<name>`` beside ``loss``."""
        session = self.infoshape
        if "loss" in logs and session is not None and not session.closed:
            session.flush_steps()
            logs.update(self._rows.components())
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


class InfoshapeTrainer(InfoshapeTrainerMixin, Trainer):
    """``transformers.Trainer`` with an infoshape session: see :class:`InfoshapeTrainerMixin`."""
