"""The calorimeter geometries: CaloGAN's layers, cell centres, depths, the checks of a new geometry, and the
CaloChallenge geometries read from the challenge's binning files (voxel counts, order, centres, areas)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from surrogate.data.binning import binning_particles, read_binning_xml
from surrogate.geometry import CALOGAN, CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS, CaloGeometry, CaloLayer, PolarLayer


def test_calogan_layers():
    assert CALOGAN_LAYERS == CALOGAN.layer_names == ("layer_0", "layer_1", "layer_2")
    assert dict(CALOGAN_LAYER_SHAPES) == {"layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6)}
    assert dict(CALOGAN.cell_sizes_mm) == {"layer_0": (160.0, 5.0), "layer_1": (40.0, 40.0), "layer_2": (40.0, 80.0)}
    assert CALOGAN.n_layers == 3 and CALOGAN.n_voxels == 504
    for layer in CALOGAN.layers:
        assert layer.half_size_mm == (240.0, 240.0)  # every layer covers -240 ... +240 mm
    with pytest.raises(TypeError):
        CALOGAN_LAYER_SHAPES["layer_0"] = (1, 1)  # read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        CALOGAN.name = "other"


def test_calogan_depths_match_the_gflash_sampling_structure():
    from surrogate.simulators.gflash_params import CALOGAN_CALORIMETER

    assert [layer.depth_mm for layer in CALOGAN.layers] == [(0.0, 90.0), (90.0, 438.0), (438.0, 480.0)]
    assert CALOGAN.depth_mm == 480.0 and CALOGAN.sampling_layer_mm == (2.0, 4.0)
    assert CALOGAN.sampling_layer_ends == CALOGAN_CALORIMETER.readout_ends == (15, 73, 80)
    x0 = CALOGAN_CALORIMETER.radiation_length_mm
    thickness_x0 = [np.diff(layer.depth_x0(x0)).item() for layer in CALOGAN.layers]
    np.testing.assert_allclose(thickness_x0, [5.8, 22.3, 2.7], atol=0.05)  # datasets/README.md
    assert CALOGAN.layers[-1].depth_x0(x0)[1] == pytest.approx(30.8, abs=0.05)


def test_cell_centres_follow_the_spec_convention():
    for layer in CALOGAN_LAYERS:
        y, x = CALOGAN.cell_centres_mm(layer)
        dy, dx = CALOGAN.cell_sizes_mm[layer]
        assert y.shape == (CALOGAN_LAYER_SHAPES[layer][0],) and x.shape == (CALOGAN_LAYER_SHAPES[layer][1],)
        assert y.dtype == x.dtype == np.float64
        # symmetric about the shower axis, half a cell inside the +-240 mm edges
        np.testing.assert_allclose(x, -x[::-1], atol=1e-12)
        np.testing.assert_allclose(y, -y[::-1], atol=1e-12)
        assert x[0] == pytest.approx(-240.0 + dx / 2) and y[-1] == pytest.approx(240.0 - dy / 2)
        np.testing.assert_array_equal(np.diff(x), dx)
    with pytest.raises(ValueError, match="unknown CaloGAN layer 'layer_3'"):
        CALOGAN.cell_centres_mm("layer_3")


def test_a_new_geometry_is_checked():
    layer = CaloLayer("a", (2, 4), (10.0, 5.0), (0.0, 12.0))
    geometry = CaloGeometry("toy", [layer, CaloLayer("b", (1, 1), (20.0, 20.0), (12.0, 30.0))], sampling_layer_mm=(1, 2))
    assert geometry.layers[0] is layer and geometry.n_voxels == 9 and geometry.sampling_layer_ends == (4, 10)
    assert layer.cell_centres_mm()[1].tolist() == [-7.5, -2.5, 2.5, 7.5]
    with pytest.raises(ValueError, match="not a sampling calorimeter"):
        CaloGeometry("plain", [layer]).sampling_layer_ends
    with pytest.raises(ValueError, match=r"CaloLayer 'a': shape\[0\] must be an integer >= 1, got 0"):
        CaloLayer("a", (0, 4), (10.0, 5.0), (0.0, 12.0))
    with pytest.raises(ValueError, match=r"cell_size_mm\[1\] must be a finite number > 0 mm"):
        CaloLayer("a", (2, 4), (10.0, -5.0), (0.0, 12.0))
    with pytest.raises(ValueError, match=r"depth_mm\[1\] must be a finite number > 5 mm"):
        CaloLayer("a", (2, 4), (10.0, 5.0), (5.0, 5.0))
    with pytest.raises(ValueError, match="distinct"):
        CaloGeometry("toy", [layer, layer])
    with pytest.raises(ValueError, match="non-empty"):
        CaloGeometry("toy", [])
    with pytest.raises(ValueError, match="expected layers front to back"):
        CaloGeometry("toy", [CaloLayer("b", (1, 1), (1.0, 1.0), (10.0, 20.0)), layer])
    with pytest.raises(ValueError, match="not a multiple of the sampling layer thickness 5"):
        CaloGeometry("toy", [layer], sampling_layer_mm=(2.0, 3.0))


# --- CaloChallenge geometries (polar layers from the challenge's binning files) ------------------
BINNING = Path(__file__).resolve().parents[1] / "datasets" / "calochallenge"


@pytest.mark.parametrize(("stem", "n_voxels", "ids", "planar"), [
    ("binning_dataset_1_photons", 368, (0, 1, 2, 3, 12), (1, 2)),
    ("binning_dataset_1_pions", 533, (0, 1, 2, 3, 12, 13, 14), (1, 2, 12, 13)),
    ("binning_dataset_2", 6480, tuple(range(45)), tuple(range(45))),
])
def test_challenge_binning_files_give_the_challenge_voxel_counts(stem, n_voxels, ids, planar):
    """The voxel counts the challenge's evaluate.py checks (368, 533, 6480); layers without radial
    bins are left out; eta/phi features only for layers with more than one angular bin."""
    geometry = read_binning_xml(BINNING / f"{stem}.xml")
    assert geometry.name == stem and geometry.n_voxels == n_voxels
    assert geometry.layer_names == tuple(f"layer_{i}" for i in ids)
    assert tuple(int(layer.name[6:]) for layer in geometry.layers if layer.two_dimensional) == planar
    assert all(layer.depth_mm is None for layer in geometry.layers)
    if stem == "binning_dataset_2":
        assert {layer.shape for layer in geometry.layers} == {(16, 9)}
        np.testing.assert_allclose(geometry.layers[7].r_edges_mm, 4.65 * np.arange(10), atol=1e-9)


def test_polar_voxel_order_is_layer_then_angle_then_radius():
    """The challenge's README: a flat shower reshaped to (N, layers, n_alpha, n_r) is voxel
    [layer, alpha, r]; our unflatten must give the same index at every position."""
    geometry = read_binning_xml(BINNING / "binning_dataset_2.xml")
    flat = np.arange(geometry.n_voxels)[None, :]
    layers = geometry.unflatten(flat)
    expected = flat.reshape(1, 45, 16, 9)
    for index, name in enumerate(geometry.layer_names):
        np.testing.assert_array_equal(layers[name], expected[:, index])
    np.testing.assert_array_equal(geometry.flatten(layers), flat)
    photons = read_binning_xml(BINNING / "binning_dataset_1_photons.xml")
    starts = [photons.layer_slices[name].start for name in photons.layer_names]
    assert starts == [0, 8, 168, 358, 363]  # 8, 10 x 16, 10 x 19, 5, 5 voxels


def test_polar_voxel_centres_areas_and_binning_agree():
    """Centres: (r_mid cos a_mid, r_mid sin a_mid), alpha bins from -pi; each voxel's own centre
    falls into it; areas add up to the disc of the last edge (exact up to rounding)."""
    layer = read_binning_xml(BINNING / "binning_dataset_1_photons.xml").layer("layer_1")
    eta, phi = layer.voxel_centres_mm()
    edges = np.asarray(layer.r_edges_mm)
    j, i = 3, 5  # fourth angular bin, sixth radial bin
    r_mid, a_mid = (edges[i] + edges[i + 1]) / 2, -np.pi + (j + 0.5) * 2 * np.pi / 10
    k = j * layer.n_r + i
    assert (eta[k], phi[k]) == pytest.approx((r_mid * np.cos(a_mid), r_mid * np.sin(a_mid)), abs=1e-12)
    np.testing.assert_array_equal(layer.voxel_index(eta, phi), np.arange(layer.n_cells))
    assert layer.voxel_areas_mm2().sum() == pytest.approx(np.pi * 200.0**2, rel=1e-12)
    assert layer.voxel_index(np.array([0.0, 200.0, -1.0]), np.array([0.0, 0.0, 0.0])).tolist() == [
        5 * layer.n_r, layer.n_cells, 9 * layer.n_r]  # alpha(0, 0) = 0: bin 5; r = 200 outside; alpha = pi: last bin
    ring = PolarLayer("ring", (0.0, 1.0, 3.0))
    assert not ring.two_dimensional and ring.voxel_centres_mm()[0].tolist() == [0.5, 2.0]
    assert ring.voxel_areas_mm2().tolist() == pytest.approx([np.pi, 8 * np.pi])


def test_calogan_flattens_in_the_challenge_order():
    rng = np.random.default_rng(0)
    showers = {name: rng.random((2, *shape)) for name, shape in CALOGAN_LAYER_SHAPES.items()}
    flat = CALOGAN.flatten(showers)
    assert flat.shape == (2, 504)
    np.testing.assert_array_equal(flat[:, 288:288 + 144], showers["layer_1"].reshape(2, 144))
    for name, back in CALOGAN.unflatten(flat).items():
        np.testing.assert_array_equal(back, showers[name])
    tensors = CALOGAN.flatten({k: torch.as_tensor(v) for k, v in showers.items()})
    assert isinstance(tensors, torch.Tensor) and torch.equal(tensors, torch.as_tensor(flat))
    eta, phi = CALOGAN.layer("layer_2").voxel_centres_mm()
    assert (eta[7], phi[7]) == (-180.0, -120.0)  # row 1, column 1 of 12 x 6 cells of 40 (y) x 80 (x) mm
    assert CALOGAN.layer("layer_0").voxel_areas_mm2().sum() == pytest.approx(480.0**2)
    with pytest.raises(ValueError, match=r"showers\['layer_1'\] has shape \(2, 12, 11\); expected \(N, 12, 12\)"):
        CALOGAN.flatten({**showers, "layer_1": showers["layer_1"][:, :, :11]})
    with pytest.raises(ValueError, match=r"voxels have shape \(2, 503\); expected \(N, 504\)"):
        CALOGAN.unflatten(flat[:, :503])


def test_same_voxels_ignores_names_and_depths_only():
    photons = read_binning_xml(BINNING / "binning_dataset_1_photons.xml")
    deeper = CaloGeometry("other name", [dataclasses.replace(layer, depth_mm=(10.0 * i, 10.0 * i + 5))
                                         for i, layer in enumerate(photons.layers)])
    assert photons.same_voxels(deeper) and not photons.same_voxels(CALOGAN)
    assert not photons.same_voxels(read_binning_xml(BINNING / "binning_dataset_1_pions.xml"))
    assert CALOGAN.describe() == "'CaloGAN' (3 layers, 504 voxels)"
    with pytest.raises(ValueError, match="'layer_1' is a PolarLayer, not a rectangular CaloLayer"):
        photons.cell_centres_mm("layer_1")


@pytest.mark.parametrize(("text", "match"), [
    ('<Bins><Bin name="photon"><Layer id="0" r_edges="0,5,3" n_bin_alpha="1"/></Bin></Bins>',
     "r_edges_mm must be at least two finite, strictly increasing edges"),
    ('<Bins><Bin name="photon"><Layer id="1" r_edges="0,5" n_bin_alpha="1"/></Bin></Bins>',
     "has id 1; expected the ids 0, 1, 2"),
    ('<Bins><Bin name="photon"><Layer id="0" r_edges="0,5" n_bin_alpha="x"/></Bin></Bins>',
     "n_bin_alpha must be integers"),
    ('<Bins><Bin name="photon"><Layer id="0" r_edges="0,5" n_bin_alpha="0"/></Bin></Bins>',
     "n_alpha must be an integer >= 1, got 0"),
    ('<Bins><Bin name="photon"><Layer id="0" r_edges="0,5"/></Bin></Bins>', r"lacking \['n_bin_alpha'\]"),
    ('<Bins><Bin name="photon"><Layer id="0" r_edges="0" n_bin_alpha="1"/></Bin></Bins>',
     "has no layer with radial bins"),
    ('<Bins><Bin name="a"/><Bin name="b"/></Bins>', r"holds particles \['a', 'b'\]; pass particle="),
    ("<Bins><Bin", "not a valid XML binning file"),
])
def test_bad_binning_files_are_named(tmp_path, text, match):
    path = tmp_path / "binning.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        read_binning_xml(path)
    assert "binning.xml" in str(info.value)


def test_binning_particle_choice(tmp_path):
    path = tmp_path / "two.xml"
    path.write_text('<Bins><Bin name="a"><Layer id="0" r_edges="0,1" n_bin_alpha="2"/></Bin>'
                    '<Bin name="b"><Layer id="0" r_edges="0,1,2" n_bin_alpha="1"/></Bin></Bins>')
    assert binning_particles(path) == ["a", "b"]
    assert read_binning_xml(path, particle="b").n_voxels == 2
    with pytest.raises(ValueError, match=r"no <Bin name='c'>; the file has \['a', 'b'\]"):
        read_binning_xml(path, particle="c")
    with pytest.raises(FileNotFoundError, match="nope.xml: no such binning file"):
        read_binning_xml(tmp_path / "nope.xml")
