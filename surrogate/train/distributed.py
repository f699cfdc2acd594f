"""One distributed set-up for every launcher: torchrun, ``srun`` and ``mpiexec``.

:func:`init_distributed` finds this process's rank, the world size and the local rank (its index
among the ranks of its node), starts ``torch.distributed`` and picks the device:

1. **torchrun** (``torch.distributed.run``): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
   ``MASTER_ADDR``, ``MASTER_PORT`` are in the environment; the process group starts from them.
2. **An MPI launcher** (``mpiexec``/``mpirun`` of MPICH, Open MPI or PMIx, also under
   ``srun --mpi=pmi2``: size variable ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE`` or ``PMIX_SIZE``),
   else **Slurm** (``srun``: ``SLURM_STEP_NUM_TASKS``), else any process in which ``mpi4py`` has
   initialised MPI (``python -m mpi4py``). The environment only says how many tasks to expect;
   ranks come from ``mpi4py``'s ``COMM_WORLD`` and the local rank from its node-local
   communicator (``COMM_TYPE_SHARED``), never from ``SLURM_LOCALID``, which ``mpiexec`` inside
   an ``sbatch`` script passes unchanged (0) to every rank. Rank 0 picks a free TCP port and
   broadcasts its address and the port over MPI; every rank then joins a TCP rendezvous.

   A launcher's task count must equal MPI's world size: an ``srun`` whose ``--mpi=`` plugin does
   not match the MPI library starts N independent processes that each see an MPI world of size 1
   and would otherwise train N unrelated models without any error. :func:`init_distributed`
   stops with a :class:`DistributedSetupError` naming both numbers instead. Slurm's
   ``SLURM_NTASKS`` and ``SLURM_STEP_NUM_TASKS`` are checked the same way under any MPI
   launcher (a count equal to the number of nodes is accepted: launchers start one proxy per
   node with ``srun``).
3. Otherwise a single process (world size 1, no process group).

The communication backend is NCCL on GPUs and gloo on CPUs; never ``mpi`` (the torch wheels are
built without it). Each rank uses one device: ``cuda:<local rank>`` when GPUs are present.

**A failing rank ends the job.** Launch through ``python -m mpi4py`` (``mpiexec -n 4 python -m
mpi4py -m surrogate run ...``, ``srun python -m mpi4py -m surrogate ...``): an exception that
escapes on any rank then calls ``MPI_Abort``, and the launcher kills the other ranks, instead of
leaving them blocked in a collective until the timeout (``timeout_s``, the backstop).

**Bounded start.** The ranks meet at a TCP store (rank 0's address, or ``MASTER_ADDR`` and
``MASTER_PORT``) within ``start_timeout_s`` (60 s by default, ``surrogate --start-timeout``):
a rank that never joins, a port in use or torchrun's variables left in a job script end the
start with a :class:`DistributedSetupError` naming the variables and values, never a wait on
torch's 600 s default. Torchrun's variables without torchrun (no ``TORCHELASTIC_RUN_ID``) are
honoured (a hand-made launch) but named in that error; under an MPI launcher they are refused at
once, since every rank would read the same ``RANK``.

**Seeds** (see :func:`rank_seed`): models are initialised from ``seed`` on every rank (and
``DistributedDataParallel`` broadcasts rank 0's weights anyway); the noise and the data order
use ``seed + rank``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "DistributedSetupError",
    "all_gather_object",
    "all_reduce_mean",
    "any_rank",
    "barrier",
    "broadcast_object",
    "context",
    "discover_ranks",
    "init_distributed",
    "main_rank_first",
    "rank_seed",
    "resolve_device",
    "shutdown",
    "wrap_ddp",
]

# world sizes set by MPI launchers: MPICH/Hydra, Open MPI, PMIx
_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Slurm's task counts: of the srun step, and of the allocation (sbatch --ntasks)
_SLURM_TASK_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
START_TIMEOUT_S = 60.0
"""Default seconds for all ranks to meet at the start (:func:`init_distributed`)."""
COLLECTIVE_TIMEOUT_S = 300.0
"""Default seconds a collective of the training loop may wait for a rank (a hung rank ends the
job after this long); waits around work that rank 0 does alone (:func:`barrier`) have no limit."""


class DistributedSetupError(RuntimeError):
    """The launcher, MPI and the environment disagree about the job (see the message)."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank, ``0 <= rank < world_size``.
        world_size: number of processes.
        local_rank: index among the processes of this node (picks the GPU).
        device: this rank's device.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (a single process).
        launcher: ``"torchrun"``, ``"slurm"``, ``"mpi"`` or ``"single"``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is running."""
        return self.world_size > 1


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


def init_distributed(device: str = "auto", *, backend: str = "auto", timeout_s: float = COLLECTIVE_TIMEOUT_S,
                     start_timeout_s: float = START_TIMEOUT_S) -> DistributedContext:
    """Starts ``torch.distributed`` for this job if it has more than one rank (see the module
    documentation); a single process gets a context without a process group. Calling it again
    returns the running context.

    Arguments:
        device: ``"auto"`` (``cuda:<local rank>`` when CUDA is available, else CPU), ``"cpu"``
            or ``"cuda"``.
        backend: ``"auto"`` (NCCL for CUDA, gloo for CPU), ``"nccl"`` or ``"gloo"``.
        timeout_s: how long a collective may wait for the other ranks before failing, seconds.
        start_timeout_s: how long the ranks may take to meet at the start, seconds.

    Returns:
        The :class:`DistributedContext`.

    Raises:
        DistributedSetupError: inconsistent launch (see :func:`discover_ranks`), the ranks did
            not all meet within ``start_timeout_s`` or the rendezvous port is in use (the
            message names the variables and values), ``"cuda"`` without a GPU, or more local
            ranks than GPUs on a node.
        ValueError: an unknown device or backend name (``"mpi"`` is refused: torch wheels lack
            it), ``backend="nccl"`` on CPU devices, or a timeout that is not positive.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r} (the torch wheels have no 'mpi' backend)")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    for name, value in (("timeout_s", timeout_s), ("start_timeout_s", start_timeout_s)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    rank, world, local, launcher = discover_ranks()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedSetupError("device 'cuda' requested but torch sees no CUDA device")
        if local >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"local rank {local} on {socket.gethostname()} has no GPU: {torch.cuda.device_count()} visible; "
                "start one task per GPU"
            )
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world == 1:
        return _set(DistributedContext(device=dev, launcher=launcher))
    chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if chosen == "nccl" and dev.type != "cuda":
        raise ValueError("backend 'nccl' needs CUDA devices; this job runs on the CPU (use 'gloo' or 'auto')")
    store = _rendezvous(rank, world, launcher, start_timeout_s)
    # device_id binds the NCCL communicator to this rank's GPU (no guessing from the rank)
    device_id = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(chosen, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **device_id)
    global _STORE
    _STORE = store
    return _set(DistributedContext(rank, world, local, dev, chosen, launcher))


def _rendezvous(rank: int, world: int, launcher: str, timeout_s: float) -> dist.Store:
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


_CONTEXT: DistributedContext | None = None
_STORE: dist.Store | None = None  # the rendezvous store of init_distributed (barrier counts there)
_BARRIERS = 0  # barriers passed so far, the same count on every rank


def _set(ctx: DistributedContext) -> DistributedContext:
    global _CONTEXT
    _CONTEXT = ctx
    return ctx


def context() -> DistributedContext:
    """The context of :func:`init_distributed`; a single-process CPU context if it was not called.

    A process group started elsewhere (e.g. by the user's own code) is reported with its rank and
    world size.
    """
    if _CONTEXT is not None and (_CONTEXT.world_size == 1 or dist.is_initialized()):
        return _CONTEXT
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        local = int(os.environ.get("LOCAL_RANK", 0))
        dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local, dev, backend, "external")
    return DistributedContext()


def resolve_device(name: str = "auto") -> torch.device:
    """The device to train or generate on: this rank's device when several ranks run (the
    name, e.g. a pipeline's ``[run] device``, is then ignored: :func:`init_distributed` chose
    ``cuda:<local rank>`` or the CPU); otherwise ``"auto"`` (CUDA when a GPU is present, else the CPU),
    ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Raises:
        ValueError: an unknown name, or ``"cuda"`` on a machine without a CUDA device.
    """
    ctx = context()
    if ctx.distributed:
        return ctx.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
    return torch.device(name)


def shutdown() -> None:
    """Destroys the process group started by :func:`init_distributed` (no-op otherwise)."""
    global _CONTEXT, _STORE
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = _STORE = None


def rank_seed(seed: int, rank: int | None = None) -> int:
    """The seed of a rank's noise and data order: ``seed + rank`` (``seed`` on rank 0)."""
    return int(seed) + (context().rank if rank is None else int(rank))


def barrier(poll_s: float = 0.2) -> None:
    """Waits for every rank (no-op in a single process), also around work that rank 0 does
    alone (simulating the data, validating, writing a report), which may last much longer than
    a collective's timeout.

    Each rank counts itself in at the rendezvous store of :func:`init_distributed` and polls it
    every ``poll_s`` seconds: the wait has no time limit and leaves the CPU to the ranks still
    working (a blocking barrier would busy-poll a core). A rank that fails ends the job through
    its launcher (``python -m mpi4py``'s ``MPI_Abort``, torchrun's agent), and if rank 0, which
    hosts the store, dies, the others' next poll fails. In a process group started elsewhere it
    is ``torch.distributed.barrier``.

    Arguments:
        poll_s: seconds between polls.

    Raises:
        RuntimeError: the store is gone (rank 0 died); an external group's barrier timed out.
    """
    global _BARRIERS
    ctx = context()
    if not ctx.distributed:
        return
    if _STORE is None:
        dist.barrier()
        return
    _BARRIERS += 1
    key = f"surrogate/barrier/{_BARRIERS}"
    count = _STORE.add(key, 1)
    while count < ctx.world_size:
        time.sleep(poll_s)
        count = _STORE.add(key, 0)
    # rank 0 may host the store: it leaves only when every rank has seen the count complete, so
    # that a job ending right after a barrier never pulls the store from under a polling rank
    left = _STORE.add(f"{key}/left", 1)
    while ctx.is_main and left < ctx.world_size:
        time.sleep(0.01)
        left = _STORE.add(f"{key}/left", 0)


@contextlib.contextmanager
def main_rank_first() -> Iterator[None]:
    """Runs the body on rank 0 first, then on the other ranks (a no-op in a single process).

    For work that rank 0 does while the others wait, after which the others find its results
    in place: rank 0 simulates a data set or writes a file, the others then reuse it. Ranks
    other than 0 wait in :func:`barrier` before the body (no time limit, no CPU under MPI);
    rank 0 passes that barrier after its body. If rank 0's body raises, rank 0 does not pass the
    barrier: the exception ends the job (``python -m mpi4py`` calls ``MPI_Abort``) instead of
    letting the others run the body on missing results.

    Example:
        >>> with main_rank_first():
        ...     pass  # e.g. simulate the data set unless the file exists
    """
    ctx = context()
    if ctx.distributed and not ctx.is_main:
        barrier()
    yield
    if ctx.distributed and ctx.is_main:
        barrier()


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (float64; the same keys on every rank).

    Arguments:
        values: name -> number on this rank.

    Returns:
        name -> mean over ranks (the input itself in a single process).
    """
    ctx = context()
    if not ctx.distributed or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= ctx.world_size
    return dict(zip(keys, t.tolist()))


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop signal)."""
    ctx = context()
    if not ctx.distributed:
        return bool(flag)
    device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects created by this program only)."""
    if not context().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """The list of every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    ctx = context()
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` on this rank's device when the job is distributed;
    ``module`` itself otherwise. The module must already be on ``context().device``.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from
    the same weights, and averages gradients over ranks in ``backward``. The steps of
    :mod:`surrogate.train.steps` call it themselves on the plain modules they are given (the
    one place where training wraps networks); call it only in a step of your own.
    """
    ctx = context()
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # LocallyConnected2d's bias with one output channel gets a gradient whose stride differs from
    # the parameter's only along that size-1 dimension: the same memory layout, so DDP's
    # performance warning about it is a false alarm.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides", category=UserWarning)
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)
