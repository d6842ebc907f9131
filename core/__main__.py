"""``python -m infoshape`` runs the command line (``torchrun -m infoshape train ...`` too)."""

import sys

from infoshape.apps.cli import main

sys.exit(main())
