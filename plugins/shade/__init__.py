"""SHADE, SHAnnon DEcay (Blot, Robert, Thome, Cord, ICIP 2018): ``shade`` and ``shade_binary``.

Modules, by responsibility:

- :mod:`~infoshape.plugins.shade.functional`: ``p(Z=1 | y)`` (:func:`p_active`) and Ω
  (:func:`shade_penalty`, eq. 11) with its closed-form gradient;
- :mod:`~infoshape.plugins.shade.averages`: Algorithm 1's moving averages
  (:class:`ShadeAverages`);
- :mod:`~infoshape.plugins.shade.plugin`: the ``shade`` plugin (:class:`Shade`), whose
  docstring holds the method's details (docs/methods.md §2);
- :mod:`~infoshape.plugins.shade.binary`: the binary-activation experiment of §4.4
  (:class:`BinaryActivation`, the ``shade_binary`` plugin :class:`ShadeBinary`).
"""

from infoshape.plugins.shade.averages import ShadeAverages
from infoshape.plugins.shade.binary import BinaryActivation, ShadeBinary, ShadeBinaryConfig
from infoshape.plugins.shade.functional import P_Z, p_active, shade_penalty
from infoshape.plugins.shade.plugin import Shade, ShadeConfig

__all__ = [
    "P_Z",
    "BinaryActivation",
    "Shade",
    "ShadeAverages",
    "ShadeBinary",
    "ShadeBinaryConfig",
    "ShadeConfig",
    "p_active",
    "shade_penalty",
]
