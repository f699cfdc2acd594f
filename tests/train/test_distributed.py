"""Training across MPI-launched ranks: ``mpiexec -n 2 python -m mpi4py`` with the MPICH wheel.

Every model family trains on 2 ranks (the steps wrapping their plain modules themselves) and ends
with bit-identical parameters on both; NPE (a deterministic model) on 2 ranks with per-rank
batch B matches 1 rank with batch 2B; a stop signal stops both ranks at the same step with a
checkpoint and status 75 and a 2-rank job killed mid-run resumes on 1 rank (both through the
``surrogate train`` command under ``mpiexec``); a rank that raises ends the job within seconds;
``main_rank_first`` lets rank 0 write before the others read; a launch whose task count
disagrees with MPI's world size is refused; a bad start (torchrun's variables left in the
environment, a Slurm task count that differs from MPI's, a port in use) ends within the start
timeout with one line naming the variables. The other jobs (``mpi_job.py``) use only public
``surrogate.train``, ``surrogate.models`` and ``surrogate.losses`` pieces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from surrogate.train import distributed
from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint

JOB = Path(__file__).resolve().parent / "mpi_job.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
for _name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS",
              "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
    ENV.pop(_name, None)
STALE_TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29571"}


def _mpiexec() -> str:
    found = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
    if not Path(found).exists():
        pytest.fail("mpiexec not found: install the test extra (mpi4py and the mpich wheel)")
    return found


def _launch(n: int, *args, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mpi4py", *map(str, args)]
    if n > 1:
        command = [_mpiexec(), "-n", str(n), *command]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, **kwargs)


def _params(folder: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"params_rank{rank}.pt", weights_only=True)


@pytest.mark.parametrize("family", ["calo", "galaxy", "npe"])
def test_two_ranks_end_with_bit_identical_parameters(tmp_path, family):
    proc = _launch(2, JOB, family, tmp_path, "--batch", "16", "--steps", "10" if family != "npe" else "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "done.json").read_text())["world_size"] == 2
    rank0, rank1 = _params(tmp_path, 0), _params(tmp_path, 1)
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{family}: {key} differs between ranks"
    # training moved the weights away from the initialisation (the ranks agree on a real update)
    checkpoints = sorted((tmp_path).glob("**/checkpoints/step_*.pt"))
    assert checkpoints and all(load_checkpoint(p)["step"] > 0 for p in checkpoints)


def test_two_ranks_with_batch_b_match_one_rank_with_batch_2b(tmp_path):
    """NPE has no noise in training: the same global batches give the same weights to within
    float32 round-off (the gradient of a mean over 50 vs the average of two means over 25)."""
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _launch(2, JOB, "npe", two, "--batch", "25", "--steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _launch(1, JOB, "npe", one, "--batch", "50", "--steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _params(two, 0), _params(one, 0)
    assert json.loads((two / "done.json").read_text())["step"] == json.loads((one / "done.json").read_text())["step"] == 54
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


def test_a_failing_rank_ends_the_job_within_seconds(tmp_path):
    t0 = time.perf_counter()
    proc = _launch(2, JOB, "galaxy", tmp_path, "--steps", "1000", "--fail-at", "3", timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end after one rank failed"
    assert not (tmp_path / "done.json").exists()


def calo_config(write, folder: Path, showers: Path, max_steps: int) -> Path:
    """The tiny CaloGAN pipeline file of the multi-rank tests (``write``: the
    ``tiny_calo_gan_config`` fixture): batch 16 per rank, checkpoints every 10 steps."""
    return write(folder, showers, seed=5, batch_size=16, max_steps=max_steps, every=10, extra="n_critic = 2\n")


def _start_two_rank_training(tmp_path: Path, write) -> tuple[subprocess.Popen, Path, Path]:
    """``mpiexec -n 2 ... surrogate train`` of a 600-step CaloGAN pipeline file, returned once it
    has a checkpoint at step >= 20: the whole stack (CLI, config, family registry, pipeline)."""
    from surrogate.simulators.gflash_runs import simulate_to_file

    showers = simulate_to_file(tmp_path / "showers.h5", 512, energy_range_gev=(5.0, 50.0), seed=1, progress=False)
    config = calo_config(write, tmp_path, showers, max_steps=600)
    command = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "surrogate", "--threads", "1",
               "--no-progress", "train", str(config)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    run = tmp_path / "run" / "train"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and job.poll() is None:
            found = latest_checkpoint(run)
            if found is not None and load_checkpoint(found)["step"] >= 20:
                break
            time.sleep(0.05)
        assert job.poll() is None, "the 2-rank job ended too early:\n" + job.stderr.read().decode()[-2000:]
    except BaseException:
        _kill(job)
        raise
    return job, config, run


def _kill(job: subprocess.Popen) -> None:
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    job.wait(timeout=30)


def test_stop_signal_ends_a_two_rank_job_with_a_checkpoint_and_status_75(tmp_path, tiny_calo_gan_config):
    """Slurm's SIGUSR1 ahead of the time limit (forwarded by the launcher): both ranks stop at the
    same step (they agree at the next logging step), rank 0 writes a checkpoint, and the launcher
    exits 75, which the sbatch templates requeue on (not MPI_Abort's status)."""
    job, config, run = _start_two_rank_training(tmp_path, tiny_calo_gan_config)
    job.send_signal(signal.SIGUSR1)
    try:
        _, err = job.communicate(timeout=60)
    finally:
        _kill(job)
    assert job.returncode == 75, err.decode()[-2000:]
    assert err.decode().count("stopped by SIGUSR1") == 2
    stopped = load_checkpoint(latest_checkpoint(run))
    assert 20 <= stopped["step"] < 600 and stopped["step"] % 10 == 0 and stopped["extra"]["world_size"] == 2
    assert stopped["step_state"]["calls"] == stopped["step"]


def test_kill_a_two_rank_job_and_resume_it_on_one_rank(tmp_path, tiny_calo_gan_config):
    job, config, run = _start_two_rank_training(tmp_path, tiny_calo_gan_config)
    _kill(job)
    killed_at = load_checkpoint(latest_checkpoint(run))
    assert killed_at["extra"]["world_size"] == 2 and 20 <= killed_at["step"] < 600

    proc = subprocess.run([sys.executable, "-m", "surrogate", "--threads", "1", "--no-progress", "train", str(config)],
                          capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written by 2 ranks" in proc.stdout
    final = load_checkpoint(latest_checkpoint(run))
    assert final["step"] == 600 and final["extra"]["world_size"] == 1
    assert final["step_state"]["calls"] == 600 and final["step_state"]["schedulers"]["critic"]["last_epoch"] == 600
    for path in sorted((run / "checkpoints").glob("step_*.pt")):  # every complete file loads
        assert load_checkpoint(path)["step"] > 0


def test_main_rank_first_lets_rank_0_write_before_the_others_read(tmp_path):
    """Rank 0 runs the body (here: writes a file after a second) while rank 1 waits, then rank 1
    runs it and finds the file in place."""
    code = f"""
import sys, time
from pathlib import Path
from surrogate.train import distributed
ctx = distributed.init_distributed("cpu")
path = Path({str(tmp_path / "data.txt")!r})
with distributed.main_rank_first():
    if not path.exists():
        time.sleep(1.0)
        path.write_text(f"written by rank {{ctx.rank}}")
    seen = path.read_text()
sys.stdout.write(f"rank {{ctx.rank}}: {{seen}}\\n")
distributed.shutdown()
"""
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-c", code], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(proc.stdout.splitlines()) == ["rank 0: written by rank 0", "rank 1: written by rank 0"]


def test_a_launch_whose_task_count_disagrees_with_mpi_is_refused(tmp_path):
    """What a mis-set ``srun --mpi=`` gives: two tasks that each see an MPI world of size 1."""
    env = {**ENV, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    proc = subprocess.run([sys.executable, "-m", "mpi4py", "-m", "surrogate", "run", str(tmp_path / "any.toml")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0
    assert "slurm started 2 tasks" in proc.stderr and "COMM_WORLD has size 1" in proc.stderr and "--mpi=" in proc.stderr


def test_local_rank_comes_from_mpi_not_from_an_inherited_slurm_localid():
    """mpiexec inside an sbatch script: both ranks inherit the batch step's SLURM_LOCALID=0, yet
    get local ranks 0 and 1 (one GPU each)."""
    env = {**ENV, "SLURM_LOCALID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    code = ("import sys; from surrogate.train.distributed import discover_ranks; "
            "sys.stdout.write(' '.join(map(str, discover_ranks())) + '\\n')")  # one write: lines do not mix
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(proc.stdout.split("\n")[:2]) == ["0 2 0 mpi", "1 2 1 mpi"]


def test_ranks_wait_for_rank_0_beyond_the_collective_timeout_without_using_a_cpu():
    """Rank 0 works alone for 4 s in a job whose collectives time out after 1 s: the other rank
    waits in barrier without failing and uses well under a second of CPU time meanwhile."""
    code = """
import sys, time
from surrogate.train import distributed
ctx = distributed.init_distributed("cpu", timeout_s=1.0)
cpu = time.process_time()
if ctx.is_main:
    time.sleep(4.0)  # e.g. simulating the data set
distributed.barrier()
distributed.all_reduce_mean({"x": 1.0})  # the process group is still usable
sys.stdout.write(f"rank {ctx.rank} cpu {time.process_time() - cpu:.3f}\\n")
distributed.shutdown()
"""
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-c", code], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    waited = [line for line in proc.stdout.splitlines() if line.startswith("rank 1 ")]
    assert len(waited) == 1 and float(waited[0].split()[-1]) < 0.5, proc.stdout


def test_nccl_on_cpu_devices_is_refused_on_every_rank():
    code = "from surrogate.train import distributed; distributed.init_distributed('cpu', backend='nccl')"
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-c", code], capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert proc.returncode != 0 and "backend 'nccl' needs CUDA devices" in proc.stderr


def test_discovery_from_torchrun_and_single_process_environments():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert distributed.discover_ranks(env) == (3, 8, 1, "torchrun")
    assert distributed.discover_ranks({}) == (0, 1, 0, "single")
    # a batch script on the first node of an allocation, outside srun: one process
    assert distributed.discover_ranks({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) == (0, 1, 0, "single")
    with pytest.raises(distributed.DistributedSetupError, match="RANK='x' is not an integer"):
        distributed.discover_ranks({**env, "RANK": "x"})


def test_single_process_context_and_collectives_are_identities():
    ctx = distributed.context()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert distributed.all_reduce_mean({"a": 2.0}) == {"a": 2.0}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.all_gather_object(5) == [5] and distributed.broadcast_object("x") == "x"
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(module) is module
    assert distributed.rank_seed(7) == 7
    with distributed.main_rank_first():
        pass


def _start_errors(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("surrogate: error:")]
    assert lines and "Traceback" not in stderr, stderr[-2000:]
    return lines


def test_stale_torchrun_variables_fail_within_the_start_timeout(tmp_path):
    """A job script that exports torchrun's variables, started without torchrun: no peer joins."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "surrogate", "--start-timeout", "3", "train", str(tmp_path / "a.toml")],
                          capture_output=True, text=True, env={**ENV, **STALE_TORCHRUN}, timeout=60)
    elapsed = time.perf_counter() - t0
    (line,) = _start_errors(proc.stderr)
    assert proc.returncode == 2 and elapsed < 30, (proc.returncode, elapsed)
    assert "1 of 2 ranks joined" in line and "WORLD_SIZE=2" in line and "TORCHELASTIC_RUN_ID unset" in line


def test_torchrun_variables_under_mpiexec_are_refused_at_once(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "surrogate", "train",
                           str(tmp_path / "a.toml")], capture_output=True, text=True, env={**ENV, **STALE_TORCHRUN},
                          timeout=60)
    assert proc.returncode != 0 and time.perf_counter() - t0 < 30
    line = _start_errors(proc.stderr)[0]
    assert "RANK=0 WORLD_SIZE=2" in line and "PMI_SIZE=2" in line and "TORCHELASTIC_RUN_ID is unset" in line


def test_a_slurm_task_count_that_differs_from_mpi_is_refused_under_mpiexec(tmp_path):
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "surrogate", "train",
                           str(tmp_path / "a.toml")], capture_output=True, text=True,
                          env={**ENV, "SLURM_NTASKS": "4"}, timeout=60)
    assert proc.returncode != 0
    line = _start_errors(proc.stderr)[0]
    assert "SLURM_NTASKS=4" in line and "world size 2" in line


def test_a_rendezvous_port_in_use_is_named(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "surrogate", "train",
                               str(tmp_path / "a.toml")], capture_output=True, text=True,
                              env={**ENV, "MASTER_PORT": str(port)}, timeout=60)
    assert proc.returncode != 0
    line = _start_errors(proc.stderr)[0]
    assert f"port {port} is in use" in line and f"MASTER_PORT={port}" in line
