"""A user's simulator named by an entry point: import from a folder, seeding, output checks."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from surrogate.simulators.user import load_simulator, run_simulator


def test_load_simulator_from_a_folder_then_sys_path(tmp_path):
    (tmp_path / "user_sim_folder_mod.py").write_text("class Sim:\n    def run(theta):\n        return theta\n"
                                                     "value = 3\n")
    fn = load_simulator("user_sim_folder_mod:Sim.run", folder=tmp_path)
    assert fn(np.ones((2, 1))).shape == (2, 1)
    assert str(tmp_path) not in sys.path  # the folder is searched during the import only
    assert load_simulator("numpy:sin")(np.zeros(1))[0] == 0  # a module on sys.path
    with pytest.raises(ValueError, match=r"\[simulator\] entry_point: expected \"module:function\", got 'numpy.sin'"):
        load_simulator("numpy.sin")
    with pytest.raises(ValueError, match=rf"cannot import module 'no_such_mod_xyz' \(looked in {tmp_path} and sys.path\)"):
        load_simulator("no_such_mod_xyz:f", folder=tmp_path)
    with pytest.raises(ValueError, match=r"'user_sim_folder_mod' \(.*user_sim_folder_mod.py\) has no attribute 'nope'"):
        load_simulator("user_sim_folder_mod:nope", folder=tmp_path)
    with pytest.raises(ValueError, match=r"value is not a function \(type int\)"):
        load_simulator("user_sim_folder_mod:value", folder=tmp_path)


def test_run_simulator_seeds_each_batch_and_restores_global_state():
    """numpy- and torch-global randomness and a seed keyword all give reproducible batches, the
    batches differ, and the callers' generators are left as they were."""
    theta = torch.zeros(10, 2)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    for simulator in (lambda t: t + np.random.normal(size=t.shape),
                      lambda t: torch.as_tensor(t) + torch.randn(t.shape, dtype=torch.float64),
                      lambda t, seed: t + np.random.default_rng(seed).normal(size=t.shape)):
        x = run_simulator(simulator, theta, seed=7, batch_size=4)
        assert x.shape == (10, 2) and x.dtype == torch.float32
        assert torch.equal(x, run_simulator(simulator, theta, seed=7, batch_size=4))
        assert not torch.equal(x, run_simulator(simulator, theta, seed=8, batch_size=4))
        assert not torch.equal(x[:4], x[4:8])  # each batch its own seed
    assert (np.random.get_state()[1] == np_state).all() and torch.equal(torch.get_rng_state(), torch_state)
    assert run_simulator(lambda t: t[:, 0], theta, seed=0).shape == (10, 1)  # one number per simulation


def test_run_simulator_refuses_bad_output_and_names_the_rows():
    theta = torch.zeros(6, 1)
    with pytest.raises(ValueError, match=r"sim returned shape \(2,\) for 3 parameter rows"):
        run_simulator(lambda t: np.zeros(2), theta, seed=0, batch_size=3, name="sim")
    calls = iter([np.zeros((3, 2)), np.zeros((3, 3))])
    with pytest.raises(ValueError, match=r"data of shape \(3,\) per simulation on rows 3\+, but \(2,\) before"):
        run_simulator(lambda t: next(calls), theta, seed=0, batch_size=3)
    with pytest.raises(ValueError, match="returned str, expected an array"):
        run_simulator(lambda t: "x", theta, seed=0)

    def broken(t):
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError) as caught:
        run_simulator(broken, theta, seed=0, batch_size=4, name="mine")
    assert "in simulator mine on rows 0 to 3" in caught.value.__notes__
