"""Your own simulator, written outside the package, for ``pipelines/npe_user_simulator.toml``.

A damped harmonic oscillator released at rest from unit displacement and read out with Gaussian
noise: ``x(t) = exp(-gamma t) cos(omega t) + noise`` at 30 times from 0 to 3 s. The pipeline file
names the function as ``[simulator] entry_point = "npe_user_simulator:simulate"``; this module is
imported from the pipeline file's folder. Any function of this form works: parameters ``(N, D)``
in, data ``(N, ...)`` out (numpy or torch), a failed simulation as a row of NaN.
"""

import numpy as np

TIMES = np.linspace(0.0, 3.0, 30)
"""Read-out times in s."""

NOISE = 0.05
"""Standard deviation of the read-out noise, in units of the initial displacement."""


def simulate(theta: np.ndarray, seed: int) -> np.ndarray:
    """Noisy displacements of the oscillator.

    Arguments:
        theta: ``(N, 2)``: angular frequency ``omega`` in rad/s and damping rate ``gamma`` in 1/s.
        seed: seeds the noise (the pipeline passes a different seed for every batch).

    Returns:
        ``(N, 30)`` displacements at :data:`TIMES`, in units of the initial displacement.
    """
    rng = np.random.default_rng(seed)
    omega, gamma = theta[:, :1], theta[:, 1:2]
    clean = np.exp(-gamma * TIMES) * np.cos(omega * TIMES)
    return clean + NOISE * rng.normal(size=clean.shape)
