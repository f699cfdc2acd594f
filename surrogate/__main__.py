"""``python -m surrogate`` is the ``surrogate`` command (useful as ``python -m mpi4py -m surrogate``)."""

import sys

from surrogate.cli import main

sys.exit(main())
