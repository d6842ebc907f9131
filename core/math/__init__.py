"""The shared math of estimators and penalties: pairwise distances, Gram matrices, matrix entropy.

One implementation each, so that every plugin computes a distance or a kernel the same way
(STYLE.md §12). Plugins import these public names from here (the package re-exports each
submodule's ``__all__``) or from the submodules:

- :mod:`infoshape.math.linalg`: flattening to samples, pairwise squared distances, one-hot,
  label pairing, class-conditional splits, the finite-input check.
- :mod:`infoshape.math.matrix_entropy`: Gram matrices and the matrix-based Rényi α-entropy
  and mutual information (docs/methods.md §1), kernel widths.

The math depends on :mod:`infoshape.errors` only, never on the session or an application.
"""

from infoshape.math import linalg, matrix_entropy
from infoshape.math.linalg import *  # noqa: F403  (its __all__)
from infoshape.math.matrix_entropy import *  # noqa: F403  (its __all__)

__all__ = sorted({*linalg.__all__, *matrix_entropy.__all__})  # one list each, in the modules
