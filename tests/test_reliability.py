"""The command line under bad input, concurrency and leftovers: one line, status 2, no traceback.

Each test drives one trial of the reliability issue through ``surrogate.cli.main`` (in process,
fast) on a tiny CaloGAN run; the distributed trials (stale torchrun variables, Slurm counts, a
port in use, a hung rank) are in ``tests/train/test_distributed.py`` and ``tests/train/test_faults.py``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from surrogate.checks import ExtrapolationWarning
from surrogate.cli import main
from surrogate.data.calo import write_calogan
from surrogate.data.event_writer import stitch_shards
from surrogate.rundir import RunDirectoryLocked, abandoned, lock_run_directory, temporary_name
from surrogate.simulators.gflash_runs import simulate_to_file


@pytest.fixture(scope="module")
def showers(tmp_path_factory) -> Path:
    """256 GFlash showers, 5-50 GeV."""
    folder = tmp_path_factory.mktemp("showers")
    return Path(simulate_to_file(folder / "showers.h5", 256, energy_range_gev=(5.0, 50.0), seed=1, progress=False))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, showers, tiny_calo_gan_config) -> Path:
    """A run folder trained for 4 steps (shared by the tests that only read it)."""
    folder = tmp_path_factory.mktemp("trained")
    config = tiny_calo_gan_config(folder, showers, max_steps=4, every=2)
    assert main(["--no-progress", "train", str(config)]) == 0
    return folder / "run"


@pytest.fixture
def config_of(tiny_calo_gan_config):
    """``config_of(folder, showers, **{old: new})``: the tiny CaloGAN file (4 steps, checkpoints
    every 2) with text replacements."""

    def write(folder: Path, showers: Path, **replace: str) -> Path:
        path = tiny_calo_gan_config(folder, showers, max_steps=4, every=2)
        text = path.read_text()
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new)
        path.write_text(text)
        return path

    return write


def _error(capsys, argv: list[str], *needles: str) -> str:
    """Runs the CLI, expects status 2 and one stderr line naming every needle; returns it."""
    status = main(["--no-progress", *map(str, argv)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("surrogate: error:")]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _temporary_of(path: Path, pid: int) -> Path:
    """The temporary that process ``pid`` on this host would write for ``path``."""
    return path.with_name(temporary_name(path, "e" * 12).name.replace(f"-{os.getpid()}.", f"-{pid}."))


def _dead_pid() -> int:
    """The process id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------- bad input


def test_a_directory_given_as_an_input_file(capsys, tmp_path, showers):
    (tmp_path / "folder.h5").mkdir()
    _error(capsys, ["validate", tmp_path / "folder.h5", showers, "--out", tmp_path / "r"], "folder.h5", "directory")


def test_an_existing_directory_given_as_out(capsys, tmp_path, trained):
    (tmp_path / "out.h5").mkdir()
    _error(capsys, ["generate", trained, "--n", 4, "--out", tmp_path / "out.h5"], "out.h5", "directory")


def test_a_report_folder_that_is_an_existing_file(capsys, tmp_path, showers):
    (tmp_path / "report").write_text("mine")
    _error(capsys, ["validate", showers, showers, "--out", tmp_path / "report"], "report", "existing file")
    assert (tmp_path / "report").read_text() == "mine"


@pytest.mark.parametrize("old, new, needles", [
    ("latent_dim = 8", 'latent_dim = "eight"', ("latent_dim", "'eight'")),
    ("batch_size = 32", 'batch_size = "32"', ("batch_size", "'32'")),
    ("channels = 2\n", 'channels = "abc"\n', ("channels", "'abc'")),
    ("seed = 7", "seed = -1", ("[run] seed", "-1")),
    ("block_size = 64", "block_size = 64\nnum_workers = -1", ("num_workers", "-1")),
])
def test_bad_configuration_values_name_the_key(capsys, tmp_path, showers, old, new, needles, config_of):
    config = config_of(tmp_path, showers, **{old: new})
    _error(capsys, ["train", config], "calo.toml", *needles)


def test_a_file_without_events_is_named(capsys, tmp_path, showers):
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        for key, shape in {"layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6), "energy": (1,),
                           "overflow": (3,)}.items():
            f.create_dataset(key, shape=(0, *shape), dtype="f4")
    _error(capsys, ["validate", empty, showers, "--out", tmp_path / "r"], "empty.h5", "no events")


def test_a_text_file_given_as_a_checkpoint(capsys, tmp_path):
    text = tmp_path / "weights.pt"
    text.write_text("not a checkpoint")
    _error(capsys, ["generate", text, "--n", 4, "--out", tmp_path / "g.h5"], "weights.pt", "not a checkpoint")


def _shards(folder: Path, counts: list[int]) -> tuple[Path, list[Path]]:
    rng = np.random.default_rng(0)
    paths = []
    for rank, n in enumerate(counts):
        arrays = {"layer_0": rng.random((n, 3, 96)), "layer_1": rng.random((n, 12, 12)),
                  "layer_2": rng.random((n, 12, 6)), "energy": 1 + rng.random((n, 1)), "overflow": np.zeros((n, 3))}
        paths.append(write_calogan(folder / f"rank_{rank}.h5", arrays))
    return stitch_shards(folder / "joined.h5", paths, counts), paths


def test_a_missing_or_short_shard_is_named_before_any_event_is_read(capsys, tmp_path, showers):
    joined, shards = _shards(tmp_path, [20, 30])
    shards[1].rename(tmp_path / "aside.h5")
    _error(capsys, ["validate", showers, joined, "--out", tmp_path / "r"], "joined.h5", "rank_1.h5", "missing")
    write_calogan(shards[1], {k: v[:10] for k, v in h5py.File(tmp_path / "aside.h5", "r").items()})
    _error(capsys, ["validate", showers, joined, "--out", tmp_path / "r"], "rank_1.h5", "holds 10 events")


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path, showers,
                                                                       config_of):
    import surrogate.pipelines

    def broken(*args, **kwargs):
        raise KeyError("layer_9")

    found = surrogate.pipelines.get_family
    monkeypatch.setattr(surrogate.pipelines, "get_family",
                        lambda name, **kw: dataclasses.replace(found(name, **kw), train=broken))
    config = config_of(tmp_path, showers)
    _error(capsys, ["train", config], "KeyError: 'layer_9'")
    assert main(["--no-progress", "--debug", "train", str(config)]) == 2
    assert "Traceback" in capsys.readouterr().err


# ----------------------------------------------------------------------------- extrapolation


def test_energies_outside_the_training_range_warn_or_fail_with_strict(capsys, tmp_path, trained):
    assert main(["--no-progress", "generate", str(trained), "--n", "4", "--energy", "1e30",
                 "--out", str(tmp_path / "far.h5")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"surrogate: warning: .*incident energy of 1e\+30 GeV lies outside the training range 5\.\d+ to "
                     r"49\.\d+ GeV", err), err
    _error(capsys, ["--strict", "generate", trained, "--n", 4, "--energy", "1e30", "--out", tmp_path / "no.h5"],
           "1e+30 GeV", "(--strict)")
    assert not (tmp_path / "no.h5").exists()
    assert main(["--no-progress", "generate", str(trained), "--n", "4", "--energy", "20",
                 "--out", str(tmp_path / "in.h5")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("energy", ["inf", "nan", "-5", "0"])
def test_impossible_energies_are_refused(capsys, tmp_path, trained, energy):
    with pytest.raises(SystemExit) as info:
        main(["generate", str(trained), "--n", "4", "--energy", energy, "--out", str(tmp_path / "g.h5")])
    assert info.value.code == 2 and "--energy" in capsys.readouterr().err


def test_observations_far_outside_the_training_simulations_warn(seed):
    from surrogate.models.npe import NeuralPosterior, build_npe_flow
    from surrogate.simulators.sbi_tasks import get_task, simulate_dataset

    task = get_task("two_moons")
    theta, x = simulate_dataset(task, 200, seed=0)
    flow = build_npe_flow(theta, x, hidden_features=8, num_transforms=1, num_bins=4)
    posterior = NeuralPosterior(flow, task.prior, (2,), x_range=(x.amin(0), x.amax(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        posterior.log_prob(theta[:3], x=x[0])  # inside: silent
    with pytest.warns(ExtrapolationWarning, match=r"observation feature 1 of 50 lies outside the training range -1\.\d+ to 1\.\d+"):
        posterior.log_prob(theta[:3], x=torch.tensor([0.0, 50.0]))


def test_galaxy_conditions_far_outside_the_training_set_warn(small_vae_kwargs, seed):
    from surrogate.models.galaxy_vae import GalaxyVAE

    vae = GalaxyVAE(**small_vae_kwargs, context_loc=(21.0, -1.0), context_scale=(1.0, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        vae.sample(2, magnitude=22.0, half_light_radius=0.4)
    with pytest.warns(ExtrapolationWarning, match=r"magnitude of 30 mag lies outside the training range 17 to 25 mag"):
        vae.sample(2, magnitude=30.0, half_light_radius=0.4)
    with pytest.warns(ExtrapolationWarning, match="half-light radius of 50 arcsec"):
        vae.sample(2, magnitude=22.0, half_light_radius=50.0)


# --------------------------------------------------------------------- one writer, no leftovers


def test_a_second_writer_of_a_run_folder_stops_at_once_naming_the_first(capsys, tmp_path, showers, config_of):
    config = config_of(tmp_path, showers)
    with lock_run_directory(tmp_path / "run" / "train"):  # as a live `surrogate train` holds it
        line = _error(capsys, ["train", config], "in use by pid", str(os.getpid()))
    assert "train" in line
    assert main(["--no-progress", "train", str(config)]) == 0  # released: the next run proceeds


def test_the_lock_dies_with_its_process(tmp_path):
    """kill -9 never leaves a stale lock: the kernel releases it."""
    code = ("import os, sys; from surrogate.rundir import lock_run_directory\n"
            f"with lock_run_directory({str(tmp_path)!r}):\n    os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    with lock_run_directory(tmp_path):
        with pytest.raises(RunDirectoryLocked, match=f"pid {os.getpid()}"):
            with lock_run_directory(tmp_path):
                pass


def test_resume_refuses_a_changed_trajectory_unless_asked(capsys, tmp_path, showers, config_of):
    assert main(["--no-progress", "train", str(config_of(tmp_path, showers))]) == 0
    capsys.readouterr()
    changed = config_of(tmp_path, showers, **{"seed = 7": "seed = 8", "max_steps = 4": "max_steps = 6"})
    _error(capsys, ["train", changed], "[run] seed: 7 -> 8", "--resume-anyway")
    assert main(["--no-progress", "train", str(changed), "--resume-anyway"]) == 0
    out = capsys.readouterr().out
    assert "[run] seed: 7 -> 8" in out and "[train] max_steps: 4 -> 6" in out
    # a change that leaves the trajectory alone (more steps) resumes without asking, and is said
    longer = config_of(tmp_path, showers, **{"seed = 7": "seed = 8", "max_steps = 4": "max_steps = 8"})
    assert main(["--no-progress", "train", str(longer)]) == 0
    assert "[train] max_steps: 6 -> 8" in capsys.readouterr().out


def test_temporaries_of_killed_runs_are_removed_by_the_next_run(capsys, tmp_path, showers, trained, config_of):
    pid = _dead_pid()
    config = config_of(tmp_path, showers)
    checkpoints = tmp_path / "run" / "train" / "checkpoints"
    checkpoints.mkdir(parents=True)
    left = [_temporary_of(checkpoints / "step_00000002.pt", pid), _temporary_of(tmp_path / "gen.h5", pid)]
    live = checkpoints / temporary_name(checkpoints / "step_00000004.pt", "d" * 12).name  # this process: alive
    for path in [*left, live]:
        path.write_bytes(b"x" * 1000)
    assert all(abandoned(p) for p in left) and not abandoned(live)
    assert main(["--no-progress", "train", str(config)]) == 0
    assert not left[0].exists() and live.exists()
    assert main(["--no-progress", "generate", str(trained), "--n", "4", "--energy", "10",
                 "--out", str(tmp_path / "gen.h5")]) == 0
    assert not left[1].exists() and (tmp_path / "gen.h5").is_file()
