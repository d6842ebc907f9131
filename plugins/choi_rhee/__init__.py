"""The Choi–Rhee family: representation regularizers and their functional API (docs/methods.md §6).

Choi & Rhee, "On the statistical and information theoretical characteristics of DNN
representations", Table 5 and eqs. 7–13. The math is plain torch, usable without a session::

    from infoshape.plugins import choi_rhee

    choi_rhee.cr(z)                          # ½(‖C‖_F² − ‖diag C‖²)
    choi_rhee.cw_rr(z, labels, n_classes=10, normalize=True)

Each regularizer is also its own plugin (entry points ``cr``, ``cw_cr``, ``vr``, ``cw_vr``,
``l1r``, ``rr``, ``cw_rr``; options ``coefficient``, ``normalize``, ``layers``):
:mod:`infoshape.plugins.choi_rhee.regularizers`. The weight-decay baselines ``l1w`` and
``l2w`` are :mod:`infoshape.plugins.weight_decay`; dropout and batch norm are options of the
zoo models (``build_model("mlp", ..., dropout=0.5, batch_norm=True)``). Whether two
representations are identical-output equivalent (§3, Theorems 1–2) is
:mod:`infoshape.plugins.choi_rhee.ion` (``check_equivalence`` on two stores).
"""

from infoshape.plugins.choi_rhee.functional import cr, cw_cr, cw_rr, cw_vr, l1r, rr, vr
from infoshape.plugins.choi_rhee.regularizers import (
    CR,
    L1R,
    RR,
    VR,
    CwCR,
    CwRR,
    CwVR,
    last_activation,
)

__all__ = [
    "CR",
    "L1R",
    "RR",
    "VR",
    "CwCR",
    "CwRR",
    "CwVR",
    "cr",
    "cw_cr",
    "cw_rr",
    "cw_vr",
    "l1r",
    "last_activation",
    "rr",
    "vr",
]
