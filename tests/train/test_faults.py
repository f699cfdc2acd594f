"""Fault injection on two MPI ranks (``mpiexec -n 2 python -m mpi4py -m surrogate``, slow).

- ``kill -9`` of the whole job at a random moment of training, then the same command again: the
  final weights are bit-identical to those of an uninterrupted run, and no temporary file is left.
- ``kill -9`` at a random moment of generation, then the same command again: the file holds the
  same showers as an uninterrupted generation, and no temporary file is left.
- A rank that hangs inside a training step: the other rank fails after the collective timeout
  and the launcher ends the job (a rank that raises is in ``test_distributed.py``).

The kill moments are drawn from a fixed seed, so a failure can be replayed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from surrogate.train.checkpoint import latest_checkpoint, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed import ENV, JOB, _mpiexec, calo_config  # noqa: E402  (the launch helpers)

pytestmark = pytest.mark.slow

RNG = np.random.default_rng(2026)


def _surrogate(*args) -> list[str]:
    return [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "surrogate", "--threads", "1",
            "--no-progress", *map(str, args)]


def _run(command: list[str], timeout: float = 300) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _kill_after(command: list[str], ready, delay_s: float, timeout: float = 120) -> bool:
    """Starts ``command`` in its own session, waits until ``ready()``, then ``delay_s`` seconds,
    then kills the whole session with SIGKILL. Returns whether it was still running then."""
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
                           start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay_s)
    running = job.poll() is None
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(30)
    return running


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def test_kill_9_during_two_rank_training_then_resume_gives_bit_identical_weights(tmp_path, tiny_calo_gan_config):
    from surrogate.simulators.gflash_runs import simulate_to_file

    showers = simulate_to_file(tmp_path / "showers.h5", 512, energy_range_gev=(5.0, 50.0), seed=1, progress=False)
    clean = calo_config(tiny_calo_gan_config, tmp_path / "clean", showers, max_steps=80)
    _run(_surrogate("train", clean))
    killed = calo_config(tiny_calo_gan_config, tmp_path / "killed", showers, max_steps=80)
    run = tmp_path / "killed" / "run" / "train"
    for _ in range(2):  # two kills at random moments after a checkpoint exists
        delay = float(RNG.uniform(0.0, 2.0))
        assert _kill_after(_surrogate("train", killed), lambda: latest_checkpoint(run) is not None, delay)
    assert load_checkpoint(latest_checkpoint(run))["step"] < 80, "training ended before the kills: raise max_steps"
    _run(_surrogate("train", killed))
    a = load_checkpoint(latest_checkpoint(tmp_path / "clean" / "run" / "train"))
    b = load_checkpoint(latest_checkpoint(run))
    assert a["step"] == b["step"] == 80
    for module, state in a["modules"].items():
        for key, value in state.items():
            assert torch.equal(value, b["modules"][module][key]), f"{module}.{key} differs after kill -9 and resume"
    assert not _temporaries(tmp_path / "killed"), _temporaries(tmp_path / "killed")


def test_kill_9_during_two_rank_generation_then_rerun_gives_the_same_file(tmp_path, tiny_calo_gan_config):
    from surrogate.simulators.gflash_runs import simulate_to_file

    showers = simulate_to_file(tmp_path / "showers.h5", 512, energy_range_gev=(5.0, 50.0), seed=1, progress=False)
    config = calo_config(tiny_calo_gan_config, tmp_path, showers, max_steps=10)
    _run(_surrogate("train", config))
    run = tmp_path / "run"
    n = 60_000

    def generate(out: Path) -> list[str]:
        return _surrogate("generate", run, "--n", n, "--energy", "10:40", "--batch-size", 256, "--seed", 3,
                          "--out", out)

    _run(generate(tmp_path / "clean" / "gen.h5"))
    out = tmp_path / "killed" / "gen.h5"
    out.parent.mkdir()
    shards = out.with_name("gen.h5.shards")
    delay = float(RNG.uniform(0.5, 2.0))
    was_running = _kill_after(generate(out), lambda: shards.is_dir() and any(shards.glob(".*tmp*")), delay)
    assert was_running, "generation ended before the kill: raise n"
    assert not out.exists() and _temporaries(out.parent), "the kill left no temporary: nothing was tested"
    _run(generate(out))
    assert not _temporaries(out.parent), _temporaries(out.parent)
    with h5py.File(tmp_path / "clean" / "gen.h5") as a, h5py.File(out) as b:
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key][:], b[key][:], err_msg=key)


def test_a_hung_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(JOB), "galaxy", tmp_path,
                           "--steps", "1000", "--hang-at", "3", "--timeout", "10"],
                          capture_output=True, text=True, env=ENV, timeout=180)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0 and not (tmp_path / "done.json").exists()
    assert "Timed out" in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end with a collective timeout of 10 s"
