"""``python -m surrogate`` is the ``surrogate`` command (useful as ``python -m mpi4py -m surrogate``)."""

import os
import sys

from surrogate.cli import main

status = main()  # imported first: main sets torch's C++ log level before torch is imported
from surrogate.train.loop import TrainingInterrupted  # noqa: E402

if status == TrainingInterrupted.exit_status and "mpi4py.MPI" in sys.modules:
    # Every rank stopped at the same step after a stop signal, with a checkpoint written. Under
    # `python -m mpi4py` a non-zero SystemExit becomes MPI_Abort, whose status a launcher need
    # not pass on (srun reports a killed step), and the batch templates requeue only on 75; so
    # finalize MPI and leave with the status directly.
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
