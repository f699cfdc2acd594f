"""What an NPE pipeline trains on: the user's simulator, a file of pairs, a ``[prior]`` table, the
embedding chosen in the file; the saved posterior rebuilt from ``posterior.pt`` alone; the
README's user-simulator example end to end (pipeline file -> saved posterior -> ``surrogate
sample``)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from surrogate import cli
from surrogate.config import ConfigError, load_pipeline
from surrogate.data.pairs import write_pairs
from surrogate.pipelines.npe import FAMILY, build_embedding, load_posterior, train_posterior
from surrogate.pipelines.npe_sources import held_out_pairs, training_pairs
from surrogate.simulators.sbi_tasks import simulate_dataset

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "pipelines" / "npe_user_simulator.toml"
SMALL = """
[model]
hidden_features = 16
num_transforms = 2
num_bins = 4
[train]
max_epochs = 2
"""


def _pipeline(folder: Path, body: str, name: str = "npe.toml") -> Path:
    path = folder / name
    path.write_text('[run]\npipeline = "npe"\noutput_dir = "out"\n' + textwrap.dedent(body))
    return path


def _module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


# ---------------------------------------------------------------------------------------------
# the pipeline file


@pytest.mark.parametrize("body, message", [
    ("", r"exactly one of \[data\] task .* got none"),
    ('[data]\ntask = "two_moons"\n[simulator]\nentry_point = "m:f"\n', r"got \[data\] task and \[simulator\]"),
    ('[simulator]\nentry_point = "m:f"\n', r"\[prior\] is missing: \[simulator\] needs the prior"),
    ('[data]\ntask = "slcp"\n[prior]\nkind = "uniform"\nlow = [0]\nhigh = [1]\n', r"task 'slcp' has its own prior"),
    ('[simulator]\nentry_point = "nocolon"\n', r"\[simulator\]: entry_point: expected \"module:function\""),
    ('[data]\nfile = "p.h5"\n[prior]\nkind = "uniform"\nlow = [0, 0]\nhigh = [1]\n',
     r"\[prior\] high: expected 2 numbers \(one per parameter\), got 1"),
    ('[data]\nfile = "p.h5"\n[prior]\nkind = "gamma"\nlow = [0]\nhigh = [1]\n', r"\[prior\] kind: expected one of"),
    ('[data]\nfile = "p.h5"\n[[prior.parameters]]\nkind = "normal"\nloc = 0\nscale = 1\n'
     '[[prior.parameters]]\nkind = "lognormal"\nloc = 0\nscale = -1\n', r"\[prior\] parameters\[1\] scale: must be > 0"),
    ('[data]\nfile = "p.h5"\nreference_root = "x"\n[prior]\nkind = "normal"\nloc = [0, 0]\nscale = [1, 1]\n',
     r"reference_root is for sbibm tasks; .* set \[data\] references"),
    ('[simulator]\nentry_point = "m:f"\n[prior]\nkind = "normal"\nloc = [0]\nscale = [1]\n',
     r"\[model\] kind = 'nsf' \(coupling\) needs at least 2 parameters; \[prior\] has 1: use kind = 'maf_rqs'"),
    ('[data]\ntask = "two_moons"\n[model.embedding]\nkind = "transformer"\n',
     r"\[model.embedding\] kind: expected one of 'none', 'mlp', 'cnn', 'conv1d', 'gru', 'deepset'"),
    ('[data]\ntask = "two_moons"\n[model.embedding]\nkind = "gru"\nhidden_sizes = 3\n',
     r"unknown argument\(s\) \['hidden_sizes'\] for GRUEmbedding"),
    ('[data]\ntask = "two_moons"\n[model.embedding]\nkind = "mlp"\nin_features = 3\n',
     r"unknown argument\(s\) \['in_features'\]"),  # filled in from the data
], ids=["no-source", "two-sources", "no-prior", "prior-with-task", "entry-point", "prior-lengths", "prior-kind",
        "prior-parameter", "reference-root", "nsf-1d", "embedding-kind", "embedding-argument", "embedding-shape-argument"])
def test_source_prior_and_embedding_errors_name_the_key(tmp_path, body, message):
    path = _pipeline(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as caught:
        load_pipeline(path)
    assert str(path) in str(caught.value)


def test_embedding_kinds_take_the_data_shape(seed):
    """Each [model.embedding] kind gets its shape arguments from the data and maps a batch of
    simulations (B, *x_shape) to (B, out_features)."""
    cases = [("mlp", (6,)), ("mlp", (2, 3, 4)), ("cnn", (8, 8)), ("cnn", (2, 8, 8)), ("conv1d", (16,)),
             ("conv1d", (3, 16)), ("gru", (12,)), ("gru", (2, 12)), ("deepset", (7,)), ("deepset", (7, 3))]
    for kind, shape in cases:
        net = build_embedding({"kind": kind, "out_features": 5}, shape)
        assert net(torch.randn(4, *shape)).shape == (4, 5), (kind, shape)
        assert net.out_features == 5
    assert build_embedding({"kind": "none"}, (3,)) is None
    assert build_embedding({"kind": "mlp"}, (3,)).out_features == 32  # the documented default
    with pytest.raises(ValueError, match=r"kind = 'cnn' takes images \(H, W\) or \(C, H, W\) .* shape \(5,\)"):
        build_embedding({"kind": "cnn"}, (5,))


# ---------------------------------------------------------------------------------------------
# the user's simulator


def test_user_simulator_drops_and_counts_failed_simulations(tmp_path):
    """A simulator in the pipeline file's folder (torch output here), NaN rows for failures:
    the report counts exactly the failed training and held-out simulations."""
    _module(tmp_path, "sim_fails_right", """
        import torch
        def simulate(theta):
            x = torch.as_tensor(theta, dtype=torch.float32) + 0.1 * torch.randn(len(theta), 2)
            x[x[:, 0] > 0.8] = float("nan")  # the simulation fails there
            return x
        """)
    path = _pipeline(tmp_path, """
        [simulator]
        entry_point = "sim_fails_right:simulate"
        batch_size = 128
        [prior]
        kind = "uniform"
        low = [-1.0, -1.0]
        high = [1.0, 1.0]
        names = ["a", "b"]
        [data]
        num_simulations = 400
        [validate]
        coverage_observations = 40
        coverage_samples = 50
        """ + SMALL)
    cfg = load_pipeline(path)
    theta, x = training_pairs(cfg)
    failed = int(torch.isnan(x).any(1).sum())
    assert theta.shape == (400, 2) and x.shape == (400, 2) and 5 < failed < 80
    assert torch.equal(training_pairs(cfg)[1].nan_to_num(), x.nan_to_num())  # reproducible from [run] seed
    held_theta, _, held_failed = held_out_pairs(cfg, 40)
    assert held_failed > 0 and len(held_theta) == 40 - held_failed
    report = json.loads(FAMILY.run(cfg, progress=False).read_text())
    assert report["num_dropped"] == failed and report["num_train"] + report["num_validation"] == 400 - failed
    assert report["coverage_dropped"] == held_failed
    assert report["source"] == {"kind": "simulator", "name": "sim_fails_right:simulate"}
    assert report["c2st_mean"] is None and "no reference posterior" in report["c2st_skipped"]
    assert len(report["coverage"]["coverage"]) == 99 and report["files"] == ["coverage.png"]


def test_user_simulator_errors_name_the_entry_point(tmp_path):
    _module(tmp_path, "sim_short_rows", "def simulate(theta):\n    return theta[:-1]\n")
    prior = '[prior]\nkind = "normal"\nloc = [0.0, 0.0]\nscale = [1.0, 1.0]\n[data]\nnum_simulations = 10\n'
    cfg = load_pipeline(_pipeline(tmp_path, '[simulator]\nentry_point = "sim_short_rows:simulate"\n' + prior))
    with pytest.raises(ValueError, match=r"sim_short_rows:simulate returned shape \(9, 2\) for 10 parameter rows"):
        training_pairs(cfg)
    cfg = load_pipeline(_pipeline(tmp_path, '[simulator]\nentry_point = "no_such_module_here:f"\n' + prior))
    with pytest.raises(ValueError, match=rf"\[simulator\] entry_point 'no_such_module_here:f': cannot import .*"
                                         rf"looked in {tmp_path}"):
        training_pairs(cfg)


def test_user_task_with_references_in_sbibm_layout(tmp_path, seed):
    """Any simulator with reference posteriors in sbibm's layout gets C2ST: here two_moons
    written as a user's simulator, with datasets/sbibm/two_moons as its references."""
    _module(tmp_path, "sim_my_moons", """
        import torch
        from surrogate.simulators.sbi_simulators import simulate_two_moons
        def simulate(theta):
            return simulate_two_moons(torch.as_tensor(theta))
        """)
    path = _pipeline(tmp_path, f"""
        [simulator]
        entry_point = "sim_my_moons:simulate"
        [prior]
        kind = "uniform"
        low = [-1.0, -1.0]
        high = [1.0, 1.0]
        [data]
        num_simulations = 500
        observations = [1]
        references = "{REPO / 'datasets' / 'sbibm' / 'two_moons'}"
        [validate]
        num_samples = 400
        pair_plots = false
        coverage_observations = 0
        """ + SMALL)
    report = json.loads(FAMILY.run(load_pipeline(path), progress=False).read_text())
    assert 0.5 <= report["c2st_mean"] <= 1.0 and report["c2st_skipped"] is None and report["coverage"] is None


# ---------------------------------------------------------------------------------------------
# a file of pairs


def test_pairs_file_trains_and_holds_out_its_last_rows(tmp_path):
    theta, x = simulate_dataset("gaussian_mixture", 600, seed=5)
    theta = theta / 10  # a box of half-width 1
    x[[3, 590]] = float("nan")  # one failed training simulation, one held out
    write_pairs(tmp_path / "pairs.h5", theta.numpy(), x.numpy())
    body = """
        [data]
        file = "pairs.h5"
        [prior]
        kind = "uniform"
        low = [-1.0, -1.0]
        high = [1.0, 1.0]
        [validate]
        coverage_observations = 50
        coverage_samples = 50
        """
    cfg = load_pipeline(_pipeline(tmp_path, body + SMALL))
    report = json.loads(FAMILY.run(cfg, progress=False).read_text())
    assert (report["num_simulations"], report["num_dropped"], report["coverage_dropped"]) == (550, 1, 1)
    assert report["source"]["kind"] == "file" and report["coverage"] is not None
    rows, held = training_pairs(cfg)[0], held_out_pairs(cfg, 50)[0]
    assert torch.equal(rows, theta[:550]) and torch.equal(held, theta[550:][torch.isfinite(x[550:]).all(1)])

    too_many = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_simulations=580))
    with pytest.raises(ValueError, match=r"pairs.h5: has 600 rows; .* num_simulations = 580 .* need 630"):
        training_pairs(too_many)
    narrow = load_pipeline(_pipeline(tmp_path, body.replace("low = [-1.0, -1.0]", "low = [0.0, -1.0]") + SMALL))
    with pytest.raises(ValueError, match=r"pairs.h5: row \d+ of 'theta', .* outside the support of \[prior\]"):
        training_pairs(narrow)


# ---------------------------------------------------------------------------------------------
# the saved posterior and the README example


def test_user_simulator_example_end_to_end(tmp_path, capsys):
    """pipelines/npe_user_simulator.toml (shrunk): pipeline file -> posterior.pt -> `surrogate
    sample` writes sbibm's CSV format; the posterior loads from posterior.pt alone (training
    folder removed), gives the same samples in Python, and refuses data of another shape."""
    cfg = load_pipeline(EXAMPLE)
    cfg = dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, output_dir=tmp_path / "run"),
        data=dataclasses.replace(cfg.data, num_simulations=400),
        model=dataclasses.replace(cfg.model, hidden_features=16, num_transforms=2, num_bins=4),
        train=dataclasses.replace(cfg.train, max_epochs=3),
        validate=dataclasses.replace(cfg.validate, coverage_observations=20, coverage_samples=50))
    report = json.loads(FAMILY.run(cfg, progress=False).read_text())
    assert report["source"] == {"kind": "simulator", "name": "npe_user_simulator:simulate"}
    assert report["c2st_skipped"] and report["coverage"] is not None

    run_dir = tmp_path / "run"
    shutil.rmtree(run_dir / "train")  # posterior.pt is self-contained
    observation = REPO / "pipelines" / "npe_user_simulator_observation.csv"
    out = tmp_path / "samples.csv"
    argv = ["sample", str(run_dir), "--x", str(observation), "--n", "300", "--out", str(out), "--seed", "3"]
    assert cli.main(argv) == 0
    assert f"wrote 300 posterior samples to {out}" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "parameter_1,parameter_2" and len(lines) == 301
    samples = np.loadtxt(out, delimiter=",", skiprows=1)
    assert ((samples[:, 0] >= 1) & (samples[:, 0] <= 10) & (samples[:, 1] >= 0.1) & (samples[:, 1] <= 1)).all()

    posterior = load_posterior(run_dir)
    x_o = torch.from_numpy(np.loadtxt(observation, delimiter=",", skiprows=1, dtype=np.float32))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        same = posterior.sample((300,), x=x_o)
    assert np.allclose(samples, same.numpy(), rtol=1e-7, atol=0)  # one API: CLI and Python agree
    assert posterior.log_prob(same[:5], x=x_o).shape == (5,)
    with pytest.raises(ValueError, match=r"x must have shape \(30,\) .* got \(3,\)"):
        posterior.sample((5,), x=torch.zeros(3))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("data_1,data_2,data_3\n0,0,0\n")
    assert cli.main(["sample", str(run_dir), "--x", str(wrong), "--out", str(tmp_path / "no.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wrong.csv: 3 values" in err and "data of shape (30,)" in err
    assert not (tmp_path / "no.csv").exists()


def test_saved_posterior_with_weights_of_another_shape_is_refused(tmp_path):
    _module(tmp_path, "sim_three", "def simulate(theta):\n    return theta.repeat(3, axis=1)\n")
    cfg = load_pipeline(_pipeline(tmp_path, """
        [simulator]
        entry_point = "sim_three:simulate"
        [prior]
        kind = "normal"
        loc = [0.0, 1.0]
        scale = [1.0, 2.0]
        [data]
        num_simulations = 200
        """ + SMALL))
    train_posterior(cfg, progress=False)
    path = tmp_path / "out" / "posterior.pt"
    assert load_posterior(path).x_shape == (6,)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["shapes"]["x_shape"] = [4]
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"edited.pt: the stored weights do not fit a flow for 2 parameters and data "
                                         r"of shape \(4,\)"):
        load_posterior(tmp_path / "edited.pt")
    assert math.isfinite(float(load_posterior(path).log_prob(torch.zeros(2), x=torch.zeros(6)).detach()))
