"""The shared math of estimators and penalties: pairwise distances, Gram matrices, matrix entropy.

One implementation each, so that every plugin computes a distance or a kernel the same way
(STYLE.md §12). Plugins import these public names (from here or from the submodules):

- :mod:`infoshape.math.linalg`: flattening to samples, pairwise squared distances, one-hot,
  label pairing, class-conditional splits, the finite-input check.
- :mod:`infoshape.math.matrix_entropy`: Gram matrices and the matrix-based Rényi α-entropy
  and mutual information (docs/methods.md §1), kernel widths.

The math depends on :mod:`infoshape.errors` only, never on the session or an application.
"""

from infoshape.math.linalg import (
    as_samples,
    class_conditional,
    full_precision,
    label_entropy,
    nonempty_samples,
    one_hot,
    paired_labels,
    pairwise_sq_distances,
    require_class_labels,
    require_finite,
)
from infoshape.math.matrix_entropy import (
    AUTO_EXACT_MAX_N,
    DECAY,
    EIGENVALUE_RTOL,
    EXACT_FLOP_COST,
    FLUSH_BELOW,
    LENGTH,
    Convention,
    Method,
    SigmaAverage,
    alignment_curve,
    as_matrix,
    as_tensor,
    convert_sigma,
    entropy,
    gram,
    information_plane,
    is_labels,
    joint_entropy,
    label_gram,
    lanczos_cost_ratio,
    mutual_information,
    normalize,
    resolve_method,
    select_sigma,
    silverman_sigma,
)

__all__ = [
    "AUTO_EXACT_MAX_N",
    "DECAY",
    "EIGENVALUE_RTOL",
    "EXACT_FLOP_COST",
    "FLUSH_BELOW",
    "LENGTH",
    "Convention",
    "Method",
    "SigmaAverage",
    "alignment_curve",
    "as_matrix",
    "as_samples",
    "as_tensor",
    "class_conditional",
    "convert_sigma",
    "entropy",
    "full_precision",
    "gram",
    "information_plane",
    "is_labels",
    "joint_entropy",
    "label_entropy",
    "label_gram",
    "lanczos_cost_ratio",
    "mutual_information",
    "nonempty_samples",
    "normalize",
    "one_hot",
    "paired_labels",
    "pairwise_sq_distances",
    "require_class_labels",
    "require_finite",
    "resolve_method",
    "select_sigma",
    "silverman_sigma",
]
