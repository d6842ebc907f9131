"""The probe set: fixed samples passed through the model at each epoch end."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
import torch
from torch import nn

from infoshape import distributed
from infoshape.capture import Capture
from infoshape.errors import CaptureError, ConfigError

__all__ = [
    "Probe",
    "as_probe",
    "gather_probe",
    "require_captured",
    "run_probe",
    "shard_probe",
]


def _as_tensor(value: object) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


@attrs.frozen(kw_only=True)
class Probe:
    """A probe set.

    Attributes:
        x: inputs, first dimension the samples.
        y: labels, one per sample.
        sample: data-set index of each sample (default ``0..n-1``); the store's ``sample``
            coordinate.
        split: which split the samples come from (``"test"``, ``"train"``); the store's
            ``split`` coordinate.
    """

    x: torch.Tensor = attrs.field(converter=_as_tensor)
    y: torch.Tensor = attrs.field(converter=_as_tensor)
    sample: np.ndarray | None = None
    split: str = "probe"

    def __attrs_post_init__(self) -> None:
        n = self.x.shape[0]
        if self.y.shape[:1] != (n,):
            raise ConfigError(
                "probe inputs and labels differ in length",
                expected=f"{n} labels",
                got=f"labels of shape {tuple(self.y.shape)}",
                fix="pass probe=(x, y) with one label per sample",
            )
        if self.sample is not None and np.shape(self.sample) != (n,):
            raise ConfigError(
                "probe sample indices differ in length",
                expected=f"{n} indices",
                got=f"shape {np.shape(self.sample)}",
                fix="pass one data-set index per probe sample",
            )

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.x.shape[0])

    @property
    def sample_index(self) -> np.ndarray:
        """The sample indices as an int64 array."""
        if self.sample is None:
            return np.arange(self.n, dtype=np.int64)
        return np.asarray(self.sample, dtype=np.int64)


def as_probe(probe: Probe | tuple) -> Probe:
    """Turn ``(x, y)``, ``(x, y, sample)`` or a :class:`Probe` into a :class:`Probe`."""
    if isinstance(probe, Probe):
        return probe
    if isinstance(probe, (tuple, list)) and len(probe) in (2, 3):
        sample = None if len(probe) == 2 else np.asarray(probe[2])
        return Probe(x=probe[0], y=probe[1], sample=sample)
    raise ConfigError(
        "probe has an unknown form",
        expected="(x, y), (x, y, sample_index) or infoshape.Probe",
        got=type(probe).__name__,
        fix="pass probe=(x_probe, y_probe)",
    )


def shard_probe(probe: Probe, rank: int, world_size: int) -> Probe:
    """This rank's strided shard of the probe set (the whole set in one process).

    Raises:
        ConfigError: the probe set is empty, or smaller than the number of ranks.
    """
    if probe.n == 0:
        raise ConfigError(
            "the probe set is empty",
            expected="a probe set of at least one sample",
            got=f"probe inputs of shape {tuple(probe.x.shape)}",
            fix="pass probe=(x, y) with samples, or probe=None for no probe pass",
        )
    if world_size == 1:
        return probe
    if probe.n < world_size:
        raise ConfigError(
            "the probe set is smaller than the number of ranks",
            expected=f"at least {world_size} probe samples (one per rank)",
            got=f"{probe.n} samples",
            fix="pass the same, larger probe set on every rank",
        )
    part = slice(rank, None, world_size)
    return Probe(
        x=probe.x[part], y=probe.y[part], sample=probe.sample_index[part], split=probe.split
    )


def gather_probe(
    captures: Mapping[str, torch.Tensor],
    outputs: torch.Tensor,
    targets: torch.Tensor,
    world_size: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The probe captures, outputs and labels of all ranks' shards, in the probe set's order."""
    gathered = [distributed.all_gather(t) for t in (*captures.values(), outputs, targets)]
    n = gathered[-1].shape[0]
    order = torch.from_numpy(np.argsort(distributed.strided_positions(n, world_size)))
    full = [t[order] for t in gathered]
    return dict(zip(captures, full[:-2], strict=True)), full[-2], full[-1]


@torch.no_grad()
def run_probe(
    model: nn.Module, capture: Capture, probe: Probe, batch_size: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pass the probe set through ``model`` in eval mode, batch by batch.

    Returns:
        the captures of every tap concatenated over the probe set (detached, on CPU),
        and the model's outputs on the probe set (on CPU).

    Raises:
        CaptureError: a tapped module did not run in the probe pass.
    """
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    outputs = []
    try:
        for start in range(0, probe.n, batch_size):
            capture.clear()
            out = model(probe.x[start : start + batch_size].to(device))
            outputs.append(_first(out).detach().cpu())
            for name, tensor in capture.tensors.items():
                parts.setdefault(name, []).append(tensor.detach().cpu())
    finally:
        capture.clear()
        model.train(was_training)
    captures = {name: torch.cat(chunks) for name, chunks in parts.items()}
    require_captured(capture, captures, "the probe pass")
    return captures, torch.cat(outputs)


def require_captured(capture: Capture, captures: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise a :class:`CaptureError` when a module ``capture`` taps did not run in ``where``."""
    missing = [r for r in capture.resolved if any(n not in captures for n in capture.names(r))]
    if missing:
        raise CaptureError(
            f"tapped module {missing[0].module!r} was never called in {where}",
            expected="every tapped module runs in the model's forward",
            got=f"no capture for {', '.join(repr(r.name) for r in missing)}",
            fix="tap a module the forward pass uses (named_modules() also lists unused "
            "ones), or call the model through session.model before session.loss",
        )


def _first(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return next(iter(out.values()))
    return out[0]  # type: ignore[index]
