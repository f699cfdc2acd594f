"""Incident-energy posteriors through a shower flow's likelihood: normalisation, a closed-form
case, flags, geometry errors, the output file, the CLI round trip and the calibration comparison."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from scipy.stats import norm

from surrogate.cli import main
from surrogate.data.calo import write_calogan
from surrogate.geometry import CALOGAN
from surrogate.models.calo_flow import CaloFlow
from surrogate.pipelines.energy_inference import (
    FLAG_EDGE_HIGH,
    FLAG_EDGE_LOW,
    FLAG_MAP_HIGH,
    FLAG_MAP_LOW,
    FLAG_NO_LIKELIHOOD,
    PRIORS,
    EnergyEdgeWarning,
    compare_energy_calibration,
    energy_grid,
    energy_posterior,
    infer_energy,
    read_showers,
)
from surrogate.pipelines.shower_generation import training_energy_range
from surrogate.train.checkpoint import save_checkpoint

TINY = {"hidden_features": 8, "num_transforms": 2, "num_bins": 4, "energy_hidden_features": 8,
        "energy_num_transforms": 2, "seed": 3}
SHAPES = {layer.name: layer.shape for layer in CALOGAN.layers}
# An untrained flow's posterior may or may not touch the grid's ends: those tests accept either.
ANY_EDGE = pytest.mark.filterwarnings("ignore::surrogate.pipelines.energy_inference.EnergyEdgeWarning")


class GaussianLogEnergy(torch.nn.Module):
    """A perfect calorimeter: ``log p(y | E) = -(log E - log E_tot)^2 / (2 sigma^2)``, E_tot the
    sum of the cells in GeV; with a log-uniform prior the posterior of log E is N(log E_tot, sigma^2)."""

    def __init__(self, sigma: float, *, nan: bool = False):
        super().__init__()
        self.sigma, self.nan, self.calls = sigma, nan, []
        self.layer_names, self.layer_shapes = CALOGAN.layer_names, SHAPES

    def dequantize(self, showers, *, generator=None):
        return {k: showers[k] + 1e-6 * torch.rand(showers[k].shape, generator=generator) for k in self.layer_names}

    def log_prob(self, showers, energy):
        self.calls.append({k: v.clone() for k, v in showers.items()})
        total = sum(v.reshape(len(v), -1).sum(1) for v in showers.values()) / 1000.0
        out = -0.5 * ((energy[:, 0].log() - total.log()) / self.sigma) ** 2
        return torch.full_like(out, math.nan) if self.nan else out


def _showers(total_gev) -> dict[str, torch.Tensor]:
    """Showers whose summed cells are ``total_gev`` (GeV), all in one cell of layer_1."""
    total = torch.as_tensor(total_gev, dtype=torch.float32)
    cells = {name: torch.zeros(len(total), *shape) for name, shape in SHAPES.items()}
    cells["layer_1"][:, 6, 6] = total * 1000.0
    return cells


@pytest.fixture(scope="module")
def flow() -> CaloFlow:
    return CaloFlow(**TINY).eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory, flow):
    """An untrained tiny calo_flow run (checkpoint with the pipeline's config keys) and a shower file."""
    folder = tmp_path_factory.mktemp("energy_run")
    config = {"run": {"pipeline": "calo_flow", "output_dir": str(folder)}, "model": TINY, "geometry": "CaloGAN",
              "data": {"train_recipe": str(folder / "gone.toml")},  # no longer readable: [generate] is used
              "generate": {"energy_min_gev": 5.0, "energy_max_gev": 50.0}}
    checkpoint = folder / "train" / "checkpoints" / "step_00000001.pt"
    save_checkpoint(checkpoint, modules={"model": flow}, config=config, step=1)
    energy = torch.tensor([[6.0], [20.0], [45.0], [30.0]])
    showers = {k: v.numpy() for k, v in flow.sample(energy, generator=torch.Generator().manual_seed(0)).items()}
    showers.update(energy=energy.numpy(), overflow=np.zeros((4, 3), np.float32))
    return folder, write_calogan(folder / "showers.h5", showers)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("refine", [True, False])
@ANY_EDGE
def test_posterior_integrates_to_one_on_its_grid(flow, prior, refine):
    showers = flow.sample(torch.tensor([[8.0], [40.0], [15.0]]), generator=torch.Generator().manual_seed(1))
    post = energy_posterior(flow, showers, grid_gev=energy_grid(5.0, 50.0, 8), prior=prior, refine=refine,
                            progress=False)
    assert post.grid.shape == post.density.shape == (3, 8)
    np.testing.assert_allclose(np.trapezoid(post.density, post.grid, axis=1), 1.0, rtol=1e-12)
    assert np.all(post.density >= 0) and post.flag.dtype == np.uint8
    assert np.all((5.0 <= post.q16) & (post.q16 <= post.median) & (post.median <= post.q84) & (post.q84 <= 50.0))
    assert np.all((5.0 - 1e-6 <= post.mean) & (post.mean <= 50.0 + 1e-6) & np.isin(post.map, post.grid))


@pytest.mark.parametrize("prior", PRIORS)
def test_gaussian_in_log_energy_matches_the_closed_form(prior):
    """log p(y|E) Gaussian in u = log E around mu, width sigma. Log-uniform prior: u ~ N(mu, sigma^2);
    uniform prior (pi(u) ~ e^u): u ~ N(mu + sigma^2, sigma^2). Quantiles of E are exp of those of u,
    the mean is exp(m + sigma^2 / 2), the MAP in E is exp(mu - sigma^2) resp. exp(mu).
    Tolerance: 0.5 % (coarse 32-point grid over 1-100 GeV, refined pass; measured: quantiles <= 0.3 %, median
    <= 0.03 %, mean 1e-7)."""
    sigma, truth = 0.05, np.array([5.0, 30.0])
    grid = energy_grid(1.0, 100.0, 32)
    post = energy_posterior(GaussianLogEnergy(sigma), _showers(truth), grid_gev=grid, prior=prior, progress=False)
    m = np.log(truth) + (0.0 if prior == "log-uniform" else sigma**2)
    np.testing.assert_allclose(post.median, np.exp(m), rtol=5e-3)
    np.testing.assert_allclose(post.q16, np.exp(m + sigma * norm.ppf(0.16)), rtol=5e-3)
    np.testing.assert_allclose(post.q84, np.exp(m + sigma * norm.ppf(0.84)), rtol=5e-3)
    np.testing.assert_allclose(post.mean, np.exp(m + sigma**2 / 2), rtol=5e-3)
    mode = np.exp(np.log(truth) - (sigma**2 if prior == "log-uniform" else 0.0))
    spacing = np.diff(post.grid, axis=1).max(axis=1)
    assert np.all(np.abs(post.map - mode) <= spacing)
    assert not post.flag.any()


def test_one_dequantisation_is_reused_for_every_grid_energy():
    model = GaussianLogEnergy(0.1)
    energy_posterior(model, _showers([10.0, 20.0]), grid_gev=energy_grid(5.0, 50.0, 12), batch_size=12, progress=False)
    assert len(model.calls) == 4  # one shower per call (batch_size = G), two passes
    first = [call["layer_0"] for call in model.calls]
    for shower in range(2):
        rows = torch.cat([first[shower], first[2 + shower]])  # both passes of this shower
        assert torch.equal(rows, rows[:1].expand_as(rows)) and bool((rows > 0).all())


def test_out_of_range_showers_are_flagged_and_counted():
    grid = energy_grid(5.0, 50.0, 16)
    with pytest.warns(EnergyEdgeWarning, match="2 of 3 showers flagged"):
        post = energy_posterior(GaussianLogEnergy(0.05), _showers([200.0, 20.0, 2.0]), grid_gev=grid, progress=False)
    assert post.flag[0] == FLAG_MAP_HIGH | FLAG_EDGE_HIGH and post.map[0] == 50.0
    assert post.flag[1] == 0
    assert post.flag[2] == FLAG_MAP_LOW | FLAG_EDGE_LOW and post.map[2] == 5.0


def test_a_posterior_cut_off_by_the_range_is_flagged():
    """Uniform prior: the density is the Gaussian likelihood in log E; at the top of the grid it is
    exp(-k^2 / 2) of the peak for a mode k sigma below: 0.32 for k = 1.5 (> edge_ratio 0.1), 0.011 for k = 3."""
    sigma = 0.05
    totals = 50.0 * np.exp(-np.array([1.5, 3.0]) * sigma)
    with pytest.warns(EnergyEdgeWarning, match="1 of 2 showers flagged"):
        post = energy_posterior(GaussianLogEnergy(sigma), _showers(totals), grid_gev=energy_grid(5.0, 50.0, 32),
                                progress=False)
    assert post.flag.tolist() == [FLAG_EDGE_HIGH, 0] and post.map[0] < 50.0


def test_no_finite_likelihood_gives_nan_and_a_flag():
    with pytest.warns(EnergyEdgeWarning, match="no finite likelihood"):
        post = energy_posterior(GaussianLogEnergy(0.1, nan=True), _showers([10.0]), grid_gev=energy_grid(5, 50, 5),
                                progress=False)
    assert post.flag[0] == FLAG_NO_LIKELIHOOD and np.isnan([post.mean, post.median, post.q16, post.map]).all()


def test_wrong_geometry_is_a_clear_error(flow, tmp_path):
    showers = {**_showers([10.0, 20.0]), "layer_1": torch.ones(2, 10, 10)}
    with pytest.raises(ValueError, match=r"showers\['layer_1'\] has shape \(2, 10, 10\), expected \(N=2, 12, 12\)"):
        energy_posterior(flow, showers, grid_gev=energy_grid(5, 50, 5), progress=False)
    path = tmp_path / "wrong.h5"
    with h5py.File(path, "w") as file:
        for name, shape in SHAPES.items():
            file[name] = np.ones((2, *(shape if name != "layer_1" else (10, 10))), np.float32)
    message = r"wrong.h5: dataset 'layer_1' has shape \(2, 10, 10\), expected .*\(N, 12, 12\)"
    with pytest.raises(ValueError, match=message):
        read_showers(path, flow)
    with pytest.raises(ValueError, match=r"grid_gev must be a strictly increasing"):
        energy_posterior(flow, _showers([10.0]), grid_gev=[5.0, 4.0, 6.0], progress=False)


@ANY_EDGE
def test_infer_energy_writes_the_posterior_file(run, tmp_path):
    folder, showers = run
    out = tmp_path / "post.h5"
    assert infer_energy(folder, showers, out, prior="log-uniform", n_grid=6, progress=False) == out
    with h5py.File(out, "r") as file:
        for key in ("mean", "median", "q16", "q84", "map", "energy"):
            assert file[key].shape == (4,) and file[key].attrs["unit"] == "GeV", key
        assert file["flag"].shape == (4,) and file["flag"].dtype == np.uint8 and "1: MAP" in file["flag"].attrs["bits"]
        np.testing.assert_array_equal(file["energy"][:], [6.0, 20.0, 45.0, 30.0])
        assert file.attrs["units"] == "GeV" and file.attrs["prior"] == "log-uniform"
        np.testing.assert_allclose(file.attrs["grid_gev"], energy_grid(5.0, 50.0, 6))
        assert file.attrs["energy_range_source"] == "[generate]" and "step_00000001.pt" in file.attrs["source_run"]
        assert np.all((5.0 <= file["median"][:]) & (file["median"][:] <= 50.0))


def test_training_range_comes_from_the_recipe_when_it_is_there(tmp_path, flow):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[simulate]\nenergy_min_gev = 2.0\nenergy_max_gev = 80.0\n")
    config = {"run": {"pipeline": "calo_flow"}, "model": TINY, "data": {"train_recipe": str(recipe)},
              "generate": {"energy_min_gev": 5.0, "energy_max_gev": 50.0}}
    save_checkpoint(tmp_path / "checkpoints" / "step_00000001.pt", modules={"model": flow}, config=config, step=1)
    low, high, source = training_energy_range(tmp_path)
    assert (low, high) == (2.0, 80.0) and source.startswith("[data] train_recipe")


@ANY_EDGE
def test_cli_round_trip_and_error(run, tmp_path, capsys):
    folder, showers = run
    out = tmp_path / "cli.h5"
    args = ["--threads", "1", "--no-progress", "infer-energy", str(folder), str(showers), "--out", str(out)]
    assert main([*args, "--prior", "log-uniform", "--n-grid", "5"]) == 0
    with h5py.File(out, "r") as file:
        assert file.attrs["prior"] == "log-uniform" and len(file.attrs["grid_gev"]) == 5 and file["q84"].shape == (4,)
    assert "cli.h5" in capsys.readouterr().out
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as file:
        file["layer_0"] = np.ones((2, 3, 90), np.float32)
    assert main([*args[:4], str(folder), str(wrong), "--out", str(out)]) == 2
    assert "dataset 'layer_0' has shape (2, 3, 90)" in capsys.readouterr().err


def _calibration_file(path, n, seed):
    """Showers with E_tot = 0.99 E (1 + 0.1 / sqrt(E) * noise) in one cell, E uniform in 5-50 GeV."""
    rng = np.random.default_rng(seed)
    energy = rng.uniform(5.0, 50.0, n)
    total = 0.99 * energy * (1 + 0.1 / np.sqrt(energy) * rng.standard_normal(n))
    cells = {k: v.numpy() for k, v in _showers(total).items()}
    cells.update(energy=energy[:, None].astype(np.float32), overflow=np.zeros((n, 3), np.float32))
    return write_calogan(path, cells)


@ANY_EDGE
def test_compare_energy_calibration_writes_report_and_figure(run, tmp_path):
    folder, _ = run
    reference = _calibration_file(tmp_path / "reference.h5", 40, seed=1)
    calibration = _calibration_file(tmp_path / "calibration.h5", 200, seed=2)
    bins = [[5.0, 20.0], [20.0, 50.0]]
    path = compare_energy_calibration(folder, tmp_path / "report", reference_path=reference,
                                      calibration_path=calibration, energy_bins_gev=bins, n_grid=6,
                                      npe_kwargs={"max_epochs": 2}, progress=False)
    section = json.loads(path.read_text())["energy_calibration"]
    assert (tmp_path / "report" / "energy_calibration.png").stat().st_size > 0
    assert section["settings"]["n_reference"] == 40 and section["settings"]["energy_range_source"] == "[generate]"
    assert 0.98 < section["methods"]["calibration"]["k"] < 1.0
    for label in ("5-20 GeV", "20-50 GeV"):
        row = section["bins"][label]
        assert set(row) == {"calibration", "flow", "npe"}
        for method in row.values():
            assert method["n"] > 0 and 0.0 <= method["coverage"] <= 1.0 and method["resolution"] >= 0.0
            assert method["bias_error"] >= 0.0 and method["coverage_error"] >= 0.0
        assert abs(row["calibration"]["bias"]) < 0.05 and 0.0 <= row["flow"]["flagged_fraction"] <= 1.0
