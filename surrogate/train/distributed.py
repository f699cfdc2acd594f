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
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from surrogate.train.launch import DistributedSetupError, discover_ranks, rendezvous

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

START_TIMEOUT_S = 60.0
"""Default seconds for all ranks to meet at the start (:func:`init_distributed`)."""
COLLECTIVE_TIMEOUT_S = 300.0
"""Default seconds a collective of the training loop may wait for a rank (a hung rank ends the
job after this long); waits around work that rank 0 does alone (:func:`barrier`) have no limit."""


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
    store = rendezvous(rank, world, launcher, start_timeout_s)
    # device_id binds the NCCL communicator to this rank's GPU (no guessing from the rank)
    device_id = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(chosen, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **device_id)
    global _STORE
    _STORE = store
    return _set(DistributedContext(rank, world, local, dev, chosen, launcher))


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
