"""Reading ``infoshape analyze``'s flags and printing its results as a table."""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

from infoshape.errors import ConfigError

__all__ = ["format_results", "parse_epochs"]


def parse_epochs(tokens: Sequence[str] | None) -> list[int] | slice | None:
    """Read ``--epochs``: epoch values (``0 5 9``) or one slice by position (``::2``, ``-1:``).

    Raises:
        ConfigError: a token that is neither an integer nor a slice, or a slice among values.
    """
    if not tokens:
        return None
    try:
        if len(tokens) == 1 and tokens[0].count(":") in (1, 2):
            return slice(*(int(p) if p.strip() else None for p in tokens[0].split(":")))
        return [int(t) for t in tokens]
    except ValueError:
        pass
    raise ConfigError(
        "cannot read --epochs",
        expected="epoch values (0 5 9) or one START:STOP[:STEP] slice of the stored epochs",
        got=" ".join(tokens),
        fix="e.g. --epochs 0 9, --epochs ::2 (every other), --epochs=-1: (the last)",
    )


def format_results(result: xr.Dataset, max_rows: int = 40) -> str:
    """A plain-text table of ``result``, one row per (epoch, tap); long tables cut in the middle.

    The assumption flags get a column when any point has one.
    """
    attrs = result.attrs
    flagged = "flags" in result and any(map(str, result["flags"].values.ravel().tolist()))
    names = ["I_XT", "I_TY", "flags"] if flagged else ["I_XT", "I_TY"]
    table = result[names].drop_vars("sample", errors="ignore").to_dataframe()
    table.columns = [f"I(X;T) [{attrs.get('unit')}]", f"I(T;Y) [{attrs.get('unit')}]"] + (
        ["assumption flags"] if flagged else []
    )
    options = ", ".join(f"{k}={v}" for k, v in (attrs.get("options") or {}).items())
    head = f"estimator {attrs.get('estimator')} ({options or 'default options'}), "
    head += f"{attrs.get('n_samples')} probe samples"
    if attrs.get("H_Y") is not None:
        head += f", H(Y) = {float(attrs['H_Y']):.4f}"
    return head + "\n" + table.to_string(float_format="{:.4f}".format, max_rows=max_rows)
