"""``python -m refdiff`` runs the ``refdiff`` command."""

import sys

from refdiff.cli import main

sys.exit(main())
