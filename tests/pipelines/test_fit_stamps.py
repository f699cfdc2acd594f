"""``surrogate fit`` and fit_stamps: real AEGIS stamps through a (tiny, untrained) galaxy model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")
h5py = pytest.importorskip("h5py")

from surrogate.checks import ExtrapolationWarning  # noqa: E402
from surrogate.cli import main  # noqa: E402
from surrogate.data.real_galaxies import read_real_galaxy_catalog  # noqa: E402
from surrogate.models.galaxy_vae import GalaxyVAE  # noqa: E402
from surrogate.pipelines.fit_stamps import fit_stamps  # noqa: E402
from surrogate.train.checkpoint import save_checkpoint  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "datasets" / "aegis_f606w"
CATALOG = DATA / "AEGIS_F606w_catalog.fits"


pytestmark = pytest.mark.usefixtures("one_galsim_thread")


@pytest.fixture
def run_dir(tmp_path, seed, small_vae_kwargs) -> Path:
    """A galaxy_vae run folder with an untrained 16x16 model at 0.15"/pixel (zero point 26)."""
    folder = tmp_path / "run"
    folder.mkdir()
    save_checkpoint(folder / "model.pt", modules={"model": GalaxyVAE(**small_vae_kwargs)},
                    config={"run": {"pipeline": "galaxy_vae"}, "model": small_vae_kwargs, "pixel_scale": 0.15,
                            "zero_point": 26.0}, step=0)
    return folder


def test_cli_fits_an_aegis_galaxy_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "fit"
    status = main(["--no-progress", "fit", str(run_dir), str(CATALOG), "--indices", "2", "--out", str(out),
                   "--steps", "20"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "fitted 1 stamp(s), correlated noise: median chi2 per pixel" in captured.out
    # the catalogue's PSF sums to 0.924: one warning line naming the stamp and the sum
    assert "surrogate: warning: AEGIS_F606w_catalog.fits[2] PSF: the PSF image sums to 0.924" in captured.err
    with h5py.File(out / "fit.h5") as f:
        for key in ("observed", "model_image", "profile", "residual_sigma", "segmentation", "footprint", "noise_power"):
            assert f[key].shape == (1, 16, 16), key
        assert f["psf"].shape == (1, 9, 9)  # odd, at least half the stamp (the band limit rings)
        assert f["name"][0].decode() == "AEGIS_F606w_catalog.fits[2]"
        assert f["magnitude_source"][0].decode() == "stamp"
        assert f.attrs["pixel_scale_arcsec"] == pytest.approx(0.15) and f.attrs["noise_model"] == "correlated"
        assert f["psf"][0].sum() == pytest.approx(1.0, abs=1e-5)
        assert f["magnitude"][0] == pytest.approx(26.0 - 2.5 * np.log10(5.170), abs=1e-3)  # the stamp's flux
        # chi2 per pixel over the galaxy is the mean squared whitened residual over its pixels
        seg, w = f["segmentation"][0], f["residual_sigma"][0]
        assert seg.sum() > 5 and f["chi2_per_pixel_galaxy"][0] == pytest.approx((w[seg] ** 2).mean(), rel=1e-5)
        assert 0 < f["footprint"][0].sum() < 256  # the 1.5" stamp is padded to the model's 2.4"
        # the fitted centre: within MAX_OFFSET pixels of the light centroid, in arcsec
        assert f["offset"].shape == (1, 2) and f["offset"].attrs["unit"] == "arcsec"
        assert np.abs(f["offset"][0]).max() <= 1.5 * 0.15 and f.attrs["fit_offset"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["galaxies"][0]["offset_arcsec"] == pytest.approx(list(h5py.File(out / "fit.h5")["offset"][0]))
    assert summary["galaxies"][0]["psf_sum"] == pytest.approx(0.9242, abs=1e-3)
    assert np.isfinite(summary["median_chi2_per_pixel_galaxy"])
    assert (out / "fit_00.png").stat().st_size > 1000


def test_cli_plain_fits_stamps_and_their_errors(run_dir, tmp_path, capsys):
    images, psfs = DATA / "AEGIS_F606w_images_01.fits", DATA / "AEGIS_F606w_PSF_images_01.fits"
    status = main(["fit", str(run_dir), str(images), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "plain FITS stamps need psf, pixel_scale, noise_variance" in err
    out = tmp_path / "plain"
    status = main(["--no-progress", "fit", str(run_dir), str(images), "--psf", str(psfs), "--pixel-scale", "0.03",
                   "--noise-variance", "6.27e-6", "--noise-correlation", str(DATA / "acs_V_unrot_sci_cf.fits"),
                   "--indices", "2", "--magnitude", "24.4", "--half-light-radius", "0.12", "--white-noise",
                   "--steps", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    with h5py.File(out / "fit.h5") as f:
        assert f["magnitude"][0] == pytest.approx(24.4) and f["magnitude_source"][0].decode() == "given"
        assert f["half_light_radius"][0] == pytest.approx(0.12) and f.attrs["noise_model"] == "white"


@pytest.mark.filterwarnings("ignore:.*PSF image sums to")
def test_out_of_range_context_warns_naming_the_stamp(seed, small_vae_kwargs):
    stamps = read_real_galaxy_catalog(CATALOG, indices=[3])
    vae = GalaxyVAE(**small_vae_kwargs)
    with pytest.warns(ExtrapolationWarning, match=r"AEGIS_F606w_catalog.fits\[3\]: magnitude of 35"):
        result = fit_stamps(vae, stamps, pixel_scale=0.15, zero_point=26.0, magnitude=35.0, steps=0)
    assert result.fit.profile.shape == (1, 1, 16, 16) and result.stamps[0].magnitude_source == "given"
    with pytest.raises(ValueError, match="cannot estimate the magnitude"):
        fit_stamps(vae, stamps, pixel_scale=0.15, zero_point=None, steps=0)
