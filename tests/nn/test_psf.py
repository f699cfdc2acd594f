"""Tests of the FFT PSF convolution (surrogate.nn.psf) against scipy, analytic Gaussians, GalSim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from surrogate.nn.psf import PSFConvolution, fft_convolve, fft_shape


def _scipy_same(image: torch.Tensor, psf: torch.Tensor) -> np.ndarray:
    """float64 reference: scipy's "same" convolution over the last two axes, with broadcasting."""
    p = psf.detach().double().numpy()
    if p.ndim == 2:
        p = p[None, None]
    return scipy.signal.fftconvolve(image.detach().double().numpy(), p, mode="same", axes=(-2, -1))


def _gaussian(shape, centre, cov, flux=1.0, dtype=torch.float64) -> torch.Tensor:
    """Samples at pixel centres of a 2-D Gaussian (row, column order), in flux per pixel."""
    y, x = torch.meshgrid(
        torch.arange(shape[0], dtype=dtype), torch.arange(shape[1], dtype=dtype), indexing="ij"
    )
    d = torch.stack([y - centre[0], x - centre[1]], dim=-1)
    inv = torch.linalg.inv(torch.as_tensor(cov, dtype=dtype))
    chi2 = torch.einsum("...i,ij,...j->...", d, inv, d)
    det = float(np.linalg.det(np.asarray(cov)))
    return flux * torch.exp(-0.5 * chi2) / (2 * math.pi * math.sqrt(det))


def _moments(img: torch.Tensor):
    """Flux, centroid (row, col) and covariance of a 2-D image (pixels)."""
    y, x = torch.meshgrid(
        torch.arange(img.shape[0], dtype=img.dtype), torch.arange(img.shape[1], dtype=img.dtype),
        indexing="ij",
    )
    flux = img.sum()
    my, mx = (img * y).sum() / flux, (img * x).sum() / flux
    cyy = (img * (y - my) ** 2).sum() / flux
    cxx = (img * (x - mx) ** 2).sum() / flux
    cyx = (img * (y - my) * (x - mx)).sum() / flux
    return flux, torch.stack([my, mx]), torch.tensor([[cyy, cyx], [cyx, cxx]], dtype=img.dtype)


# --------------------------------------------------------------------------------------------
# exact answers

@pytest.mark.parametrize(
    "psf_shape",
    [(13, 9), (1, 1, 13, 9), (3, 1, 13, 9), (1, 2, 13, 9), (3, 2, 13, 9), (1, 1, 1, 1), (31, 29)],
    ids=["shared2d", "shared4d", "per_image", "per_band", "per_image_band", "delta", "large"],
)
def test_matches_scipy_fftconvolve_float32(seed, psf_shape):
    """Odd asymmetric PSFs: equal to scipy's "same" mode to 1e-6 of the output's maximum."""
    image = torch.rand(3, 2, 48, 40)
    psf = torch.rand(psf_shape)
    psf[..., 0, :] *= 3.0  # break every symmetry (a flipped kernel would fail)
    out = fft_convolve(image, psf)
    assert out.shape == image.shape and out.dtype == torch.float32
    ref = _scipy_same(image, psf)
    rel = np.abs(out.numpy() - ref).max() / np.abs(ref).max()
    assert rel < 1e-6, rel


def test_no_wrap_around_at_minimal_fft_size(seed):
    """Light at the image borders with a PSF whose corners are bright: no circular aliasing,
    also where H + h//2 is already a fast FFT length (the padding is as tight as allowed)."""
    H, W, h, w = 60, 45, 9, 11
    assert fft_shape((H, W), (h, w)) == (64, 50)  # exactly H + h//2 and W + w//2
    image = torch.zeros(1, 1, H, W, dtype=torch.float64)
    image[..., 0, 0] = image[..., -1, -1] = image[..., 0, -1] = image[..., -1, 0] = 1.0
    image[..., H // 2, :] = 0.5
    image[..., :, W // 2] = 0.25
    psf = torch.rand(h, w, dtype=torch.float64) + 1.0
    out = fft_convolve(image, psf)
    np.testing.assert_allclose(out.numpy(), _scipy_same(image, psf), rtol=0, atol=1e-12)


@pytest.mark.parametrize("psf_size", [(24, 24), (24, 25), (25, 24), (25, 25)])
def test_psf_origin_is_the_stamps_true_centre(psf_size):
    """Gaussian galaxy (64 x 60 pixels) convolved with a Gaussian PSF sampled on an even, mixed
    or odd stamp about its geometric centre ((h - 1)/2, (w - 1)/2), GalSim's true centre: the
    result is the Gaussian with covariance C1 + C2 centred on the galaxy's centre, whatever the
    parities. Sampling errors are ~exp(-2 pi^2 sigma^2) (sigma >= 1.4 pixels) and the PSF stamp
    truncation (>= 6.9 sigma) ~1e-11, so: pixel by pixel to 1e-8 of the peak, flux to 1e-10,
    centroid to 1e-8 pixels. The same PSF sampled about pixel (h // 2, w // 2) (the old
    convention, ``drawImage(use_true_center=False)``) comes out exactly 1/2 pixel higher along
    each even axis."""
    h, w = psf_size
    cov_img = np.array([[6.0, 1.5], [1.5, 4.0]])  # pixels^2
    cov_psf = np.array([[2.25, -0.6], [-0.6, 3.0]])
    centre = (33.3, 28.6)
    image = _gaussian((64, 60), centre, cov_img, flux=250.0)[None, None]
    psf = _gaussian((h, w), ((h - 1) / 2, (w - 1) / 2), cov_psf)
    out = fft_convolve(image, psf)[0, 0]
    cov_sum = cov_img + cov_psf
    expected = _gaussian((64, 60), centre, cov_sum, flux=250.0)
    peak = float(expected.max())
    assert float((out - expected).abs().max()) < 1e-8 * peak
    flux, centroid, cov = _moments(out)
    assert abs(float(flux) - 250.0) < 1e-10 * 250.0
    torch.testing.assert_close(centroid, torch.tensor(centre, dtype=torch.float64), rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, torch.as_tensor(cov_sum), rtol=1e-7, atol=0)

    integer_centre = _gaussian((h, w), (h // 2, w // 2), cov_psf)
    _, moved, _ = _moments(fft_convolve(image, integer_centre)[0, 0])
    shift = torch.tensor([0.5 * (h % 2 == 0), 0.5 * (w % 2 == 0)], dtype=torch.float64)
    torch.testing.assert_close(moved - centroid, shift, rtol=0, atol=1e-8)


def test_fft_shape_pads_even_axes_to_the_full_linear_convolution():
    """Odd axes keep the tight N + n // 2 padding (5-smooth); even axes, whose half-pixel shift
    would spread wrapped-around light into the window, pad to at least N + n - 1 (nothing
    wraps), rounded up to a multiple of 4 without prime factors above 7."""
    assert fft_shape((64, 64), (20, 21)) == (84, 75)  # 64 + 19 = 83 -> 84; 64 + 10 = 74 -> 75
    assert fft_shape((128, 64), (20, 64)) == (160, 128)  # 147 -> 160 (not 148, 150, 152, 154, 156)
    for N, n in ((64, 20), (63, 2), (128, 64), (45, 44), (1, 2)):
        F = fft_shape((N, N), (n, n))[0]
        assert F >= N + n - 1 and F % 4 == 0


def test_gaussian_convolved_with_gaussian_adds_covariances():
    """Sampled Gaussians (sigma >= 1.5 pixels, so sampling errors are ~exp(-2 pi^2 sigma^2)):
    the result is the Gaussian with covariance C1 + C2, centred on the image's centroid; checked
    pixel by pixel (peak included) and through its second moments."""
    cov_img = np.array([[6.0, 1.5], [1.5, 4.0]])  # pixels^2, correlated and anisotropic
    cov_psf = np.array([[2.25, -0.6], [-0.6, 3.0]])
    centre = (33.0, 30.0)
    image = _gaussian((64, 64), centre, cov_img, flux=250.0)[None, None]
    psf = _gaussian((25, 25), (12, 12), cov_psf)  # odd stamp, centre pixel (12, 12)
    out = fft_convolve(image, psf)[0, 0]
    cov_sum = cov_img + cov_psf
    expected = _gaussian((64, 64), centre, cov_sum, flux=250.0)
    peak = 250.0 / (2 * math.pi * math.sqrt(np.linalg.det(cov_sum)))
    assert abs(float(out.max()) - peak) < 1e-8 * peak
    assert float((out - expected).abs().max()) < 1e-8 * peak
    flux, centroid, cov = _moments(out)
    assert abs(float(flux) - 250.0) < 1e-8 * 250.0
    torch.testing.assert_close(centroid, torch.tensor(centre, dtype=torch.float64), rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, torch.as_tensor(cov_sum), rtol=1e-7, atol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_flux_conserved_for_normalized_psfs(seed, dtype, tol):
    """Sources inside the stamp (a 10-pixel margin, more than the PSF half-width of 6):
    the total flux is unchanged by unit-sum PSFs, one per image and band. (Odd PSF sizes: the
    half-pixel shift of an even size is band-limited interpolation, which spreads a little of
    the light of these random, non-band-limited pixels past the stamp's edges, ~1e-4 of it; the
    flux for even sizes and smooth images is tested in test_psf_origin_is_the_stamps_true_centre.)"""
    image = torch.zeros(4, 3, 40, 36, dtype=dtype)
    image[..., 10:-10, 10:-10] = torch.rand(4, 3, 20, 16, dtype=dtype) * 100.0
    psf = torch.rand(4, 3, 13, 11, dtype=dtype)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    out = fft_convolve(image, psf)
    assert out.dtype == dtype
    torch.testing.assert_close(out.sum(dim=(-2, -1)), image.sum(dim=(-2, -1)), rtol=tol, atol=0)
    layer = PSFConvolution(normalize=True)  # un-normalised stamps, normalised by the layer
    out2 = layer(image, 5.0 * psf)
    torch.testing.assert_close(out2.sum(dim=(-2, -1)), image.sum(dim=(-2, -1)), rtol=tol, atol=0)


@pytest.mark.parametrize("psf_shape", [(3, 4), (2, 1, 4, 3), (2, 2, 3, 3)])
def test_gradcheck_image_and_psf(seed, psf_shape):
    """First derivatives in both arguments for every PSF layout (odd and even sizes); second
    derivatives (a gradient penalty needs them) for the per-image-and-band layout."""
    image = torch.rand(2, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    psf = torch.rand(psf_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_convolve, (image, psf))
    if len(psf_shape) == 4 and psf_shape[1] == 2:
        assert torch.autograd.gradgradcheck(fft_convolve, (image, psf))


# --------------------------------------------------------------------------------------------
# GalSim

def test_agrees_with_galsim_convolution(monkeypatch):
    """A sheared exponential galaxy drawn with its pixel (method='auto') convolved with a
    sheared, shifted Moffat PSF drawn without it (method='no_pixel'; the pixel enters exactly
    once) at 0.05 arcsec/pixel, against GalSim's Convolve(gal, psf).drawImage(method='auto').

    The only approximation is sampling: the layer evaluates the continuous convolution integral
    as a sum over the 0.05 arcsec grid, exact only for band-limited profiles. A space-like PSF
    of FWHM 0.15 arcsec (3 pixels, MTF ~3e-3 at the Nyquist frequency) makes that error
    visible: measured 3.7e-4 of the peak, tolerance 1e-3 of the peak. That the residual *is*
    the sampling error is checked by repeating the convolution on a grid twice as fine
    (0.025 arcsec, sampled back at the 0.05 arcsec pixel centres): it agrees with GalSim ten
    times better (tolerance 1e-4 of the peak, measured 1e-5; GalSim's own rendering accuracy
    is set to 1e-5 through its GSParams). Odd and even PSF stamps drawn with GalSim's default
    (centred on the stamp's true centre) must give the same answer; an even stamp drawn with
    ``use_true_center=False`` (centred on pixel (20, 20)) is off by half a pixel and fails.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    galsim = pytest.importorskip("galsim")
    scale, n = 0.05, 96  # arcsec/pixel; 4.8 arcsec stamp, 13 scale radii from centre to edge
    gsp = galsim.GSParams(folding_threshold=1e-5, maxk_threshold=1e-5, kvalue_accuracy=1e-7)
    gal = galsim.Exponential(half_light_radius=0.3, flux=100.0, gsparams=gsp).shear(g1=0.2, g2=-0.1)
    psf = (
        galsim.Moffat(beta=3.0, fwhm=0.15, trunc=0.9, gsparams=gsp)
        .shear(g1=0.05, g2=0.08)
        .shift(0.01, -0.02)  # arcsec: an asymmetric kernel, so a flip would show
    )
    reference = galsim.Convolve(gal, psf, gsparams=gsp).drawImage(
        nx=n, ny=n, scale=scale, method="auto"
    ).array
    peak = reference.max()
    image = torch.from_numpy(gal.drawImage(nx=n, ny=n, scale=scale, method="auto").array)

    def convolve(img, stamp):
        return fft_convolve(img.double()[None, None], torch.from_numpy(stamp).double())[0, 0].numpy()

    for size in (41, 40):  # odd and even stamps, centred on (size - 1) / 2
        stamp = psf.drawImage(nx=size, ny=size, scale=scale, method="no_pixel")
        err = np.abs(convolve(image, stamp.array) - reference).max()
        assert err < 1e-3 * peak, (size, err / peak)

    off = psf.drawImage(nx=40, ny=40, scale=scale, method="no_pixel", use_true_center=False)
    assert np.abs(convolve(image, off.array) - reference).max() > 1e-2 * peak  # +1/2 pixel

    fine_gal = galsim.Convolve(gal, galsim.Pixel(scale, gsparams=gsp)).drawImage(
        nx=2 * n + 1, ny=2 * n + 1, scale=scale / 2, method="no_pixel"
    )
    fine_psf = psf.drawImage(nx=81, ny=81, scale=scale / 2, method="no_pixel")
    fine = 4.0 * convolve(torch.from_numpy(fine_gal.array), fine_psf.array)[1::2, 1::2]
    assert np.abs(fine - reference).max() < 1e-4 * peak


@pytest.mark.parametrize(
    "image_size, psf_size",
    [((64, 64), (20, 20)), ((64, 64), (21, 21)), ((63, 60), (20, 15)), ((63, 60), (15, 20))],
    ids=["even", "odd", "even_rows", "even_columns"],
)
def test_agrees_with_galsim_interpolated_images(monkeypatch, image_size, psf_size):
    """The layer against GalSim's convolution of the same two pixel arrays,
    ``Convolve(InterpolatedImage(galaxy), InterpolatedImage(psf)).drawImage(method='no_pixel')``
    on the galaxy's grid (0.2 arcsec/pixel), each image centred on its true centre as GalSim
    does: a shifted, sheared Gaussian galaxy (sigma 3 pixels) and a shifted, sheared Moffat PSF
    (FWHM 3.5 pixels, an asymmetric kernel), with 20- and 21-pixel PSF stamps (20 x 20 is the
    size of the catalogue's real PSFs) and an even axis of each kind alone. The two differ only
    by GalSim's quintic interpolant against the layer's sum over samples: measured 9e-5 of the
    peak on every case, tolerance 5e-4; the old convention (PSF origin on pixel h // 2 of an
    even stamp, half a pixel off) missed by 0.11 of the peak."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    galsim = pytest.importorskip("galsim")
    scale = 0.2
    (H, W), (h, w) = image_size, psf_size
    galaxy = galsim.Gaussian(sigma=0.6).shear(g1=0.2, g2=0.1).shift(0.13, -0.27)
    psf = galsim.Moffat(beta=3.0, fwhm=0.7).shear(g1=0.05, g2=-0.08).shift(0.03, 0.05)
    gal_image = galaxy.drawImage(nx=W, ny=H, scale=scale, method="no_pixel")
    psf_image = psf.drawImage(nx=w, ny=h, scale=scale, method="no_pixel")
    reference = galsim.Convolve(
        galsim.InterpolatedImage(gal_image), galsim.InterpolatedImage(psf_image)
    ).drawImage(nx=W, ny=H, scale=scale, method="no_pixel").array
    out = fft_convolve(
        torch.from_numpy(gal_image.array).double()[None, None], torch.from_numpy(psf_image.array).double()
    )[0, 0].numpy()
    peak = reference.max()
    assert np.abs(out - reference).max() < 5e-4 * peak, np.abs(out - reference).max() / peak


@pytest.mark.parametrize("size", [20, 21])
def test_symmetric_psf_centred_on_its_stamp_keeps_the_galaxy_centroid(monkeypatch, size):
    """A point-symmetric PSF (sheared Moffat, FWHM 3.5 pixels) drawn by GalSim on a 20 x 20 or
    21 x 21 stamp about its true centre has its light centroid at the stamp's centre, so it
    must not move an off-centre galaxy (sheared exponential, half-light radius 3 pixels, drawn
    with its pixel on a 64 x 64 stamp): centroid unchanged to < 1e-3 pixel. Measured 1.8e-4
    pixel for both sizes alike: the PSF carries some of the exponential's far wings off the
    off-centre stamp, not a convention error. The old even-size convention moved it by 0.50
    pixel along both axes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    galsim = pytest.importorskip("galsim")
    scale = 0.2
    galaxy = galsim.Exponential(half_light_radius=0.6).shear(g1=0.3, g2=-0.2).shift(0.37, -0.51)
    psf = galsim.Moffat(beta=3.0, fwhm=0.7).shear(g1=0.1, g2=0.06)
    image = torch.from_numpy(galaxy.drawImage(nx=64, ny=64, scale=scale).array).double()
    stamp = torch.from_numpy(psf.drawImage(nx=size, ny=size, scale=scale, method="no_pixel").array).double()
    _, psf_centroid, _ = _moments(stamp)
    centre = torch.full((2,), (size - 1) / 2, dtype=torch.float64)
    torch.testing.assert_close(psf_centroid, centre, rtol=0, atol=1e-9)  # the premise
    out = fft_convolve(image[None, None], stamp / stamp.sum())[0, 0]
    _, before, _ = _moments(image)
    _, after, _ = _moments(out)
    assert float((after - before).abs().max()) < 1e-3, (after - before)


# --------------------------------------------------------------------------------------------
# the module

def test_module_fixed_buffer_and_state_dict(seed):
    psf = torch.rand(5, 5)
    layer = PSFConvolution(psf, normalize=True)
    assert "psf" in layer.state_dict() and not list(layer.parameters())
    image = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(layer(image), fft_convolve(image, psf / psf.sum()))
    clone = PSFConvolution(torch.zeros(5, 5) + 1.0, normalize=True)
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone(image), layer(image))
    layer64 = layer.to(torch.float64)
    assert layer64(image.double()).dtype == torch.float64
    assert "psf_shape=(5, 5)" in repr(layer)


def test_module_learnable_psf_gets_gradient(seed):
    layer = PSFConvolution(torch.rand(1, 2, 5, 5), normalize=True, learnable=True)
    assert [name for name, _ in layer.named_parameters()] == ["psf"]
    image = torch.rand(3, 2, 12, 12)
    loss = (layer(image) ** 2).sum()
    loss.backward()
    assert layer.psf.grad is not None and torch.isfinite(layer.psf.grad).all()
    assert layer.psf.grad.abs().sum() > 0


def test_module_per_call_psf_gradients(seed):
    layer = PSFConvolution()
    assert layer.psf is None and "psf" not in layer.state_dict()
    image = torch.rand(2, 1, 10, 10, requires_grad=True)
    psf = torch.rand(2, 1, 3, 3, requires_grad=True)
    layer(image, psf).sum().backward()
    assert image.grad is not None and psf.grad is not None
    # d(sum out)/d psf[m, n] = sum of the image pixels that pixel of the PSF reaches
    assert torch.all(psf.grad > 0)


@pytest.mark.parametrize(
    "kwargs, call, match",
    [
        ({}, lambda m: m(torch.rand(1, 1, 8, 8)), "no psf"),
        ({"psf": torch.rand(3, 3)}, lambda m: m(torch.rand(1, 1, 8, 8), torch.rand(3, 3)), "ambiguous"),
        ({"learnable": True}, None, "learnable=True needs"),
        ({"psf": torch.rand(3)}, None, r"psf must have shape"),
        ({"psf": torch.tensor([[1.0, float("nan")]])}, None, "non-finite"),
        ({"psf": torch.zeros(3, 3), "normalize": True}, None, "sum is zero"),
    ],
)
def test_module_errors(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        layer = PSFConvolution(**kwargs)
        call(layer)


# --------------------------------------------------------------------------------------------
# bad input

_IMG = torch.zeros(2, 3, 16, 16)
_NAN_IMG = _IMG.clone()
_NAN_IMG[1, 2, 3, 4] = float("nan")


@pytest.mark.parametrize(
    "image, psf, match",
    [
        (_IMG, torch.zeros(17, 5), r"larger than the image \(H, W\) = \(16, 16\)"),
        (_IMG, torch.zeros(5, 20), r"psf stamp \(h, w\) = \(5, 20\)"),
        (torch.zeros(3, 16, 16), torch.zeros(5, 5), r"image must have shape \(B, C, H, W\).*\(3, 16,"),
        (_IMG, torch.zeros(1, 5, 5), r"psf must have shape .*got shape \(1, 5, 5\)"),
        (_IMG, torch.zeros(3, 1, 5, 5), r"expected psf shape \(1 or 2, 1 or 3, h, w\), got \(3, 1,"),
        (_IMG, torch.zeros(2, 2, 5, 5), r"expected psf shape .*got \(2, 2, 5, 5\)"),
        (_NAN_IMG, torch.zeros(5, 5), "image contains 1 non-finite"),
        (_IMG, torch.full((5, 5), float("inf")), "psf contains 25 non-finite"),
        (_IMG, torch.zeros(5, 5).double(), "psf dtype torch.float64 does not match image dtype"),
        (_IMG.long(), torch.zeros(5, 5), "image must be float32 or float64"),
        (_IMG.half(), torch.zeros(5, 5).half(), "image must be float32 or float64"),
        (_IMG, torch.zeros(0, 5), "empty input"),
    ],
    ids=["psf_taller", "psf_wider", "image_rank", "psf_rank", "batch", "channel", "nan_image",
         "inf_psf", "dtype", "int_image", "half", "empty"],
)
def test_bad_input(image, psf, match):
    with pytest.raises(ValueError, match=match):
        fft_convolve(image, psf)


def test_finite_inputs_whose_sum_overflows_are_accepted():
    """The finiteness check looks at the sum first; an overflowing sum of finite values is not
    mistaken for a non-finite input (the element-wise test decides)."""
    image = torch.full((1, 1, 8, 8), 3e37)  # float32 sum = inf
    assert not torch.isfinite(image.sum())
    fft_convolve(image, torch.full((1, 1), 1e-3))
    with pytest.raises(ValueError, match="image contains 1 non-finite"):
        image[0, 0, 3, 3] = float("-inf")
        fft_convolve(image, torch.full((1, 1), 1e-3))
    fft_convolve(image, torch.full((1, 1), 1e-3), check_finite=False)  # opt-out: no error


def test_bad_input_types():
    with pytest.raises(TypeError, match="psf must be a torch.Tensor"):
        fft_convolve(_IMG, np.zeros((3, 3), dtype=np.float32))


def test_device_mismatch():
    if not torch.cuda.is_available():
        meta = torch.zeros(5, 5, device="meta")
        with pytest.raises(ValueError, match="psf is on device meta but image is on cpu"):
            fft_convolve(_IMG, meta)
    else:
        with pytest.raises(ValueError, match="psf is on device cuda"):
            fft_convolve(_IMG, torch.zeros(5, 5, device="cuda"))


# --------------------------------------------------------------------------------------------
# GPU

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(seed, dtype):
    image = torch.rand(4, 2, 64, 48, dtype=dtype)
    psf = torch.rand(4, 1, 25, 24, dtype=dtype)
    ref = fft_convolve(image, psf)
    gi = image.cuda().requires_grad_()
    gp = psf.cuda().requires_grad_()
    out = fft_convolve(gi, gp)
    assert out.device.type == "cuda" and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=tol * float(ref.abs().max()))
    out.square().sum().backward()
    assert gi.grad.device.type == "cuda" and gp.grad is not None
    layer = PSFConvolution(psf[0, 0], normalize=True).cuda()
    assert layer(gi.detach()).device.type == "cuda"
