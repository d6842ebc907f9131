"""How much the ``infoshape`` command says: ``--quiet``, the default, ``--verbose``.

Library code logs to the ``infoshape`` logger hierarchy (``infoshape.store``,
``infoshape.plugins.<name>`` ...) and never configures logging: a program that imports
infoshape decides where records go. The command line is such a program; this module is its
configuration, installed by :func:`infoshape.apps.cli.main` for the length of one command:

======================  ==============================================================
verbosity               what reaches stderr
======================  ==============================================================
``--quiet`` (-1)        errors only (warnings silenced); the command prints its final
                        result line on stdout and nothing else
default (0)             warnings, what plugins chose by default (INFO: the layers
                        ``information_dropout`` wraps ...), and the progress lines of
                        :data:`PROGRESS` (one line per epoch when stderr is no terminal;
                        a progress bar when it is)
``--verbose`` (1)       every record of the ``infoshape`` hierarchy from DEBUG up, with
                        its logger's name: the defaults plugins chose, store events ...
======================  ==============================================================
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PROGRESS", "QUIET", "VERBOSE", "add_verbosity_flags", "configure_logging"]

#: the logger of the per-epoch and per-cell progress lines (INFO)
PROGRESS = "infoshape.progress"
QUIET, NORMAL, VERBOSE = -1, 0, 1


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet``/``-q`` and ``--verbose``/``-v`` (exclusive) to a subcommand's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        action="store_const",
        const=QUIET,
        dest="verbosity",
        help="print only errors and the final result line",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const=VERBOSE,
        dest="verbosity",
        help="also log what infoshape and its plugins decide (the infoshape logger at DEBUG)",
    )
    parser.set_defaults(verbosity=NORMAL)


@contextmanager
def configure_logging(verbosity: int = NORMAL) -> Iterator[None]:
    """Send the ``infoshape`` loggers' records to stderr at ``verbosity``; undo it on exit.

    Levels and the handler are restored afterwards, so that :func:`~infoshape.apps.cli.main`
    can run several times in one process (tests) without stacking handlers.
    """
    root, progress = logging.getLogger("infoshape"), logging.getLogger(PROGRESS)
    saved = root.level, progress.level
    handler = logging.StreamHandler(sys.stderr)
    if verbosity >= VERBOSE:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.setLevel(logging.DEBUG)
        progress.setLevel(logging.NOTSET)
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.setLevel(logging.ERROR if verbosity <= QUIET else logging.INFO)
        progress.setLevel(logging.ERROR if verbosity <= QUIET else logging.INFO)
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            if verbosity <= QUIET:
                warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        progress.setLevel(saved[1])
