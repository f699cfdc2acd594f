"""How this process was launched and where the ranks meet: rank, world size and local rank from
torchrun's, an MPI launcher's or Slurm's environment (:func:`discover_ranks`, checked against
MPI's world size), and the bounded TCP rendezvous of :func:`surrogate.train.distributed.init_distributed`
(:func:`rendezvous`). See :mod:`surrogate.train.distributed` for the launch rules and timeouts.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from typing import Any, Mapping

import torch.distributed as dist

__all__ = [
    "DistributedSetupError",
    "discover_ranks",
    "rendezvous",
]


# world sizes set by MPI launchers: MPICH/Hydra, Open MPI, PMIx
_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# Slurm's task counts: of the srun step, and of the allocation (sbatch --ntasks)
_SLURM_TASK_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")


class DistributedSetupError(RuntimeError):
    """The launcher, MPI and the environment disagree about the job (see the message)."""


def _int_env(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        if env.get(name, "") != "":
            try:
                return int(env[name])
            except ValueError:
                raise DistributedSetupError(f"environment variable {name}={env[name]!r} is not an integer") from None
    return None


def _mpi_comm():
    """``mpi4py``'s ``COMM_WORLD`` (initialising MPI), or ``None`` when mpi4py is missing."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def discover_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int, str]:
    """Rank, world size, local rank and launcher name from the environment (see the module
    documentation for the order). Does not start anything; imports mpi4py (initialising MPI) only
    when an MPI or Slurm launch is detected or MPI is already initialised.

    Raises:
        DistributedSetupError: the launcher's task count differs from MPI's world size, mpi4py is
            missing for a multi-task Slurm/MPI launch, or a variable is not an integer.
    """
    env = os.environ if env is None else env
    mpi_size = _int_env(env, *_MPI_SIZE_VARIABLES)
    if all(env.get(k, "") != "" for k in _TORCHRUN_VARIABLES):
        if mpi_size is not None and env.get("TORCHELASTIC_RUN_ID", "") == "":
            size = next(f"{k}={env[k]}" for k in _MPI_SIZE_VARIABLES if env.get(k, "") != "")
            raise DistributedSetupError(
                f"torchrun's variables {_describe(env, _TORCHRUN_VARIABLES)} are set, but an MPI launcher "
                f"started this process ({size}) and torchrun did not (TORCHELASTIC_RUN_ID is unset): every "
                "rank would read the same RANK; unset them in the job script"
            )
        rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
        local = _int_env(env, "LOCAL_RANK")
        return int(rank), int(world), int(local if local is not None else 0), "torchrun"

    slurm_size = _int_env(env, "SLURM_STEP_NUM_TASKS")
    mpi_started = "mpi4py.MPI" in sys.modules
    if mpi_size is not None:
        launcher, expected = "mpi", mpi_size
    elif slurm_size is not None:
        launcher, expected = "slurm", slurm_size
    elif mpi_started:
        launcher, expected = "mpi", None
    else:
        return 0, 1, 0, "single"
    if expected == 1 and not mpi_started:
        return 0, 1, 0, "single"

    comm = _mpi_comm()
    if comm is None:
        raise DistributedSetupError(
            f"{launcher} started {expected} tasks but mpi4py is not installed: install the 'mpi' extra "
            "(pip install 'physics-surrogate[mpi]') or launch with torchrun"
        )
    rank, world = comm.Get_rank(), comm.Get_size()
    if expected is not None and world != expected:
        variable = "SLURM_STEP_NUM_TASKS" if launcher == "slurm" else "the MPI launcher's size variable"
        raise DistributedSetupError(
            f"{launcher} started {expected} tasks ({variable}) but MPI's COMM_WORLD has size {world}: "
            "each process would train alone. Under srun, pass the --mpi= plugin your MPI library "
            "was built for (srun --mpi=list; e.g. --mpi=pmix or --mpi=pmi2); with mpiexec, use the "
            "mpiexec of the MPI library mpi4py is linked against (python -m mpi4py --mpi-library)."
        )
    # The local rank from MPI itself, not from the environment: under mpiexec inside an sbatch
    # allocation every rank inherits the batch step's SLURM_LOCALID=0 (and would take cuda:0).
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local = node.Get_rank()
    node.Free()
    _check_slurm_counts(env, world, n_nodes=comm.allreduce(int(local == 0)))
    return rank, world, local, launcher


def _describe(env: Mapping[str, str], names: tuple[str, ...]) -> str:
    return " ".join(f"{k}={env[k]}" for k in names if env.get(k, "") != "")


def _check_slurm_counts(env: Mapping[str, str], world: int, n_nodes: int) -> None:
    """Slurm's task counts must match MPI's world size under any launcher. A count equal to the
    number of nodes is accepted: MPI launchers inside an allocation start one proxy per node with
    ``srun``, whose step variables the ranks inherit.

    Raises:
        DistributedSetupError: naming each variable, its value and MPI's world size.
    """
    wrong = [k for k in _SLURM_TASK_VARIABLES if (n := _int_env(env, k)) is not None and n not in (world, n_nodes)]
    if wrong:
        raise DistributedSetupError(
            f"Slurm's {_describe(env, tuple(wrong))} differ{'s' if len(wrong) == 1 else ''} from MPI's world size "
            f"{world} ({n_nodes} node(s)): launch as many ranks as the allocation has tasks (mpiexec -n "
            "$SLURM_NTASKS, or srun) or request as many tasks as you launch"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def rendezvous(rank: int, world: int, launcher: str, timeout_s: float) -> dist.Store:
    """The TCP store where all ``world`` ranks meet within ``timeout_s`` seconds.

    Under torchrun the store is at ``MASTER_ADDR:MASTER_PORT``, hosted by rank 0 (or by
    torchrun's agent when it says so, ``TORCHELASTIC_USE_AGENT_STORE``). Under MPI rank 0 hosts it
    at its address (loopback on one node; ``MASTER_ADDR``/``MASTER_PORT`` when the site sets them,
    else a free port) and broadcasts the address, or its failure, over MPI, so that no rank waits
    for a store that does not exist.

    Raises:
        DistributedSetupError: naming the address, the variables and what went wrong.
    """
    env = os.environ
    timeout = datetime.timedelta(seconds=timeout_s)
    if launcher == "torchrun":
        address, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
        agent = env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        store = _tcp_store(address, port, world, rank == 0 and not agent, timeout, launcher)
        if agent:  # torchrun's store outlives restarts: keep each attempt's keys apart
            store = dist.PrefixStore(f"/worker/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        _wait_for_ranks(store, world, timeout_s, f"{address}:{port}")
        return store
    comm = _mpi_comm()
    hosts = comm.allgather(socket.gethostname())
    found: tuple[Any, ...] | None = None
    store = None
    if rank == 0:
        # one node: loopback; several: rank 0's host name (or MASTER_ADDR if the site sets it)
        address = env.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else hosts[0])
        port = int(env.get("MASTER_PORT", 0)) or _free_port()
        try:
            store = _tcp_store(address, port, world, True, timeout, launcher)
            found = ("ok", address, port)
        except DistributedSetupError as exc:
            found = ("error", str(exc))
    found = comm.bcast(found, root=0)
    if found[0] == "error":
        raise DistributedSetupError(found[1])
    _, address, port = found
    if rank != 0:
        store = _tcp_store(address, port, world, False, timeout, launcher)
    _wait_for_ranks(store, world, timeout_s, f"{address}:{port}")
    return store


def _tcp_store(address: str, port: int, world: int, host: bool, timeout: datetime.timedelta,
               launcher: str) -> dist.Store:
    """A ``TCPStore`` at ``address:port``, hosted by this process when ``host``.

    Raises:
        DistributedSetupError: the port is in use, or no store answered within ``timeout``.
    """
    try:
        return dist.TCPStore(address, port, world, host, timeout=timeout, wait_for_workers=False)
    except RuntimeError as exc:
        raise DistributedSetupError(_store_failure(address, port, exc, launcher)) from None


def _store_failure(address: str, port: int, exc: BaseException, launcher: str) -> str:
    """One line naming the rendezvous address, the launch variables and the cause."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    variables = _describe(os.environ, _TORCHRUN_VARIABLES + ("TORCHELASTIC_RUN_ID",))
    if "EADDRINUSE" in text or "address already in use" in text:
        cause = f"port {port} is in use on {socket.gethostname()}"
    else:
        cause = f"cannot reach the rendezvous at {address}:{port} ({text})"
    hint = "" if not variables else f"; environment: {variables}"
    if launcher == "torchrun" and "TORCHELASTIC_RUN_ID" not in variables:
        hint += " (torchrun's variables without torchrun: stale values in the job script?)"
    return f"distributed start failed: {cause}{hint}"


def _wait_for_ranks(store: dist.Store, world: int, timeout_s: float, where: str) -> None:
    """Every rank counts itself in at the store and waits until all ``world`` have, for at
    most ``timeout_s`` seconds.

    Raises:
        DistributedSetupError: fewer ranks joined in time (named with the count, the address
            and the launch variables).
    """
    joined = store.add("surrogate/joined", 1)
    deadline = time.monotonic() + timeout_s
    while joined < world:
        if time.monotonic() > deadline:
            variables = _describe(os.environ, _TORCHRUN_VARIABLES + ("TORCHELASTIC_RUN_ID",) + _SLURM_TASK_VARIABLES
                                  + _MPI_SIZE_VARIABLES)
            raise DistributedSetupError(
                f"distributed start failed: {joined} of {world} ranks joined the rendezvous at {where} within "
                f"{timeout_s:g} s (environment: {variables or 'none'}); "
                + ("torchrun's variables without torchrun (TORCHELASTIC_RUN_ID unset): stale values in the job "
                   "script?" if "RANK=" in variables and "TORCHELASTIC_RUN_ID" not in variables
                   else "did every rank start?")
            )
        time.sleep(0.05)
        joined = store.add("surrogate/joined", 0)
