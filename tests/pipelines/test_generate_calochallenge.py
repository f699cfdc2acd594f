"""Generation into the CaloChallenge layout: a flow built on a challenge geometry writes a file that
passes the checks of the challenge's evaluation script (dataset names, event and voxel counts,
float dtypes, MeV) at the energies of a reference file; the energy draws; the refusals."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from surrogate.data.binning import read_binning_xml
from surrogate.data.calo import read_calochallenge, read_incident_energies
from surrogate.geometry import CALOGAN
from surrogate.models.calo_flow import CaloFlow
from surrogate.pipelines.calo_flow import flow_sampler
from surrogate.pipelines.shower_generation import energies_from_file, generate_showers
from surrogate.simulators.gflash_calochallenge import simulate_calochallenge_to_file

BINNING = Path(__file__).resolve().parents[2] / "datasets" / "calochallenge"
#: The voxel counts the challenge's evaluate.py (check_file) expects per dataset.
CHALLENGE_VOXELS = {"1-photons": 368, "1-pions": 533, "2": 6480, "3": 40500}


def challenge_file_check(path: Path, dataset: str) -> int:
    """What the challenge's evaluation checks and reads of a file (evaluate.py: check_file,
    extract_shower_and_energy), written out here: returns the number of events."""
    with h5py.File(path, "r") as file:
        energies, showers = file["incident_energies"], file["showers"]
        assert energies.ndim == 2 and energies.shape[1] == 1
        assert showers.shape == (energies.shape[0], CHALLENGE_VOXELS[dataset])
        assert energies.dtype.kind == showers.dtype.kind == "f"
        return energies.shape[0]


@pytest.fixture(scope="module")
def ds1_reference(tmp_path_factory):
    geometry = read_binning_xml(BINNING / "binning_dataset_1_photons.xml")
    path = simulate_calochallenge_to_file(tmp_path_factory.mktemp("ds1") / "reference.h5", 40, geometry=geometry,
                                          calorimeter="atlas_barrel", energy_distribution="powers-of-two",
                                          energy_range_gev=(0.256, 4194.304), seed=3, threshold_mev=1.0,
                                          progress=False)
    return geometry, path


def test_flow_in_challenge_geometry_writes_a_file_the_evaluation_accepts(tmp_path, ds1_reference):
    geometry, reference = ds1_reference
    flow = CaloFlow(geometry, hidden_features=8, num_transforms=1, energy_hidden_features=8,
                    energy_num_transforms=1, threshold_mev=1.0, noise_mev=0.5, seed=0).eval()
    energies = energies_from_file(reference)
    out = generate_showers(flow_sampler(flow), tmp_path / "gen.h5", energies.size, batch_size=16, seed=1,
                           progress=False, layout="calochallenge", geometry=geometry, energies_mev=energies)
    assert challenge_file_check(out, "1-photons") == challenge_file_check(reference, "1-photons") == 40
    generated, expected = read_calochallenge(out), read_calochallenge(reference)
    np.testing.assert_array_equal(generated["incident_energies"], expected["incident_energies"])  # exact MeV
    assert generated["showers"].dtype == np.float32 and np.all(generated["showers"] >= 0)
    with h5py.File(out, "r") as file:
        assert sorted(file) == ["incident_energies", "showers"] and file.attrs["geometry"] == geometry.name


def test_energies_from_file(ds1_reference):
    _, reference = ds1_reference
    all_of_them = read_incident_energies(reference)
    np.testing.assert_array_equal(energies_from_file(reference), all_of_them)  # file order
    permuted = energies_from_file(reference, 40, seed=5)
    np.testing.assert_array_equal(np.sort(permuted), np.sort(all_of_them))  # without replacement
    more = energies_from_file(reference, 100, seed=5)
    assert more.shape == (100,) and set(more) <= set(all_of_them)
    np.testing.assert_array_equal(energies_from_file(reference, 10, seed=2), energies_from_file(reference, 10, seed=2))


def test_layout_and_geometry_must_agree(tmp_path, ds1_reference):
    geometry, _ = ds1_reference

    def sample(energy, rng):
        return {name: torch.zeros(energy.shape[0], *shape) for name, shape in CALOGAN.layer_shapes.items()}

    with pytest.raises(ValueError, match="layout 'calochallenge' needs the geometry of its voxels"):
        generate_showers(sample, tmp_path / "a.h5", 4, layout="calochallenge", progress=False)
    with pytest.raises(ValueError, match="layout 'calogan' holds CaloGAN's cells, not geometry 'binning_dataset_1"):
        generate_showers(sample, tmp_path / "a.h5", 4, geometry=geometry, progress=False)
    with pytest.raises(ValueError, match=r"showers\['layer_0'\] has shape \(4, 3, 96\); expected \(N, 1, 8\)"):
        generate_showers(sample, tmp_path / "a.h5", 4, layout="calochallenge", geometry=geometry, progress=False)
    with pytest.raises(ValueError, match=r"energies_mev must be finite, > 0 MeV and of shape \(4,\)"):
        generate_showers(sample, tmp_path / "a.h5", 4, energies_mev=np.ones(3), progress=False)
    assert not (tmp_path / "a.h5").exists()
    # CaloGAN's own geometry in the challenge layout: 504 voxels, the layers flattened in order
    out = generate_showers(sample, tmp_path / "b.h5", 4, layout="calochallenge", geometry=CALOGAN, progress=False,
                           energy_range_gev=(10.0, 10.0))
    back = read_calochallenge(out)
    assert back["showers"].shape == (4, 504) and np.allclose(back["incident_energies"], 10000.0)


@pytest.fixture
def calogan_checkpoint(tmp_path) -> Path:
    """A weights-only checkpoint of a small, untrained CaloGAN generator (as the calo_gan pipeline stores it)."""
    from surrogate.models.calo_gan import CaloGANGenerator
    from surrogate.train.checkpoint import checkpoint_path, save_checkpoint

    kwargs = dict(latent_dim=4, channels=2, attention_hidden=4, response_hidden=4)
    torch.manual_seed(0)
    config = {"run": {"pipeline": "calo_gan"}, "model": {"generator": kwargs},
              "generate": {"energy_min_gev": 0.2, "energy_max_gev": 5000.0}}
    return save_checkpoint(checkpoint_path(tmp_path / "train", 0), modules={"generator": CaloGANGenerator(**kwargs)},
                           config=config, step=0)


def test_generate_stage_refuses_the_challenge_layout_for_a_calogan_model(tmp_path, ds1_reference, calogan_checkpoint):
    from surrogate.pipelines.calo_gan import generate

    geometry, reference = ds1_reference
    with pytest.raises(ValueError, match=r"the model generates showers in geometry 'CaloGAN' \(3 layers, 504 voxels\), "
                                         r"not in 'binning_dataset_1_photons' \(5 layers, 368 voxels\)"):
        generate(calogan_checkpoint, tmp_path / "x.h5", None, layout="calochallenge", geometry=geometry,
                 energies_from=reference, progress=False)
    with pytest.raises(ValueError, match="needs the geometry of its voxels"):
        generate(calogan_checkpoint, tmp_path / "x.h5", 5, layout="calochallenge", progress=False)
    with pytest.raises(ValueError, match="give the number of showers"):
        generate(calogan_checkpoint, tmp_path / "x.h5", None, progress=False)
    assert not (tmp_path / "x.h5").exists()
    # the CaloGAN layout at a reference file's energies (all of them, in order)
    out = generate(calogan_checkpoint, tmp_path / "y.h5", None, energies_from=reference, progress=False, batch_size=16)
    with h5py.File(out, "r") as file:
        np.testing.assert_allclose(file["energy"][:, 0] * 1000.0, read_incident_energies(reference), rtol=1e-6)
