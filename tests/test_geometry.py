"""The calorimeter geometry: CaloGAN's layers, cell centres, depths, and the checks of a new geometry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from surrogate.geometry import CALOGAN, CALOGAN_LAYER_SHAPES, CALOGAN_LAYERS, CaloGeometry, CaloLayer


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
