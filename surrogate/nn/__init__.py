"""Neural-network layers shared by the model families (``import surrogate.nn``).

* :class:`LocallyConnected2d`: unshared 2-D convolution (CaloGAN streams).
* :func:`fft_convolve`, :class:`PSFConvolution`: differentiable, zero-padded PSF convolution.
* :class:`MLPEmbedding`, :class:`CNNEmbedding`, :class:`Standardize`: summary networks and
  z-scoring for conditional flows.
"""

from surrogate.nn.embeddings import CNNEmbedding, MLPEmbedding, Standardize
from surrogate.nn.locally_connected import LocallyConnected2d
from surrogate.nn.psf import PSFConvolution, fft_convolve

__all__ = ["CNNEmbedding", "LocallyConnected2d", "MLPEmbedding", "PSFConvolution", "Standardize", "fft_convolve"]
