"""surrogate: learned generative surrogates of physics simulators.

Calorimeter showers (CaloGAN-style conditional GANs, CaloFlow-style normalizing flows with an
exact likelihood), galaxy light profiles (VAEs with a differentiable PSF layer) and
simulation-based inference (normalizing-flow posteriors), trained on simulator output (HDF5,
ROOT) with one training loop, one CLI and resumable checkpoints.

Submodules are imported explicitly (``import surrogate.models``); nothing is flattened into this
namespace and importing the package changes no global torch or numpy setting.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
