r"""CaloGAN-style conditional generator and critic, for any calorimeter geometry.

The design follows CaloGAN (Paganini, de Oliveira, Nachman, arXiv:1705.02355 and
arXiv:1712.10321): one stream of locally connected layers per calorimeter layer, conditioned on
the incident energy (GeV), with layer-to-layer attention in the generator and a critic that sees
physics features beside the cells. It is trained with WGAN-GP by default
(:class:`surrogate.train.steps.GANStep`, :mod:`surrogate.losses`).

**Geometry.** The layer streams are built from a :class:`~surrogate.geometry.CaloGeometry`:
one stream per layer, on the layer's cell grid ``(ny, nx)``, cell energies in MeV. By default
it is CaloGAN's (:data:`~surrogate.geometry.CALOGAN`: ``layer_0`` (3, 96), ``layer_1``
(12, 12), ``layer_2`` (12, 6)); a CaloChallenge 2022 binning
(:func:`surrogate.data.binning.read_binning_xml`) gives polar layers of ``(n_alpha, n_r)``
voxels (dataset 1 photons: 5 layers, 368 voxels; dataset 2: 45 layers of (16, 9), 6,480
voxels). The angular axis of a polar layer with several angular bins is periodic: before every
locally connected layer it is padded circularly (the last angular bin beside the first), the
radial axis with zeros, as a rectangular grid's two axes are.

**Cell representation.** Both networks work in the log space
:math:`u = \log(1 + E / E_0)` with :math:`E_0` = ``cell_scale_mev`` (1 MeV by default): cell
energies span six orders of magnitude (0.01 MeV tails to 50 GeV cores), :math:`u \in [0, 12]`
keeps every cell visible to the critic and makes training well conditioned. :math:`u = 0` is
an exactly empty cell, as in the data.

**Generator** (:class:`CaloGANGenerator`). The condition is
:math:`c = \log_{10}(E_{inc} / 10\,\mathrm{GeV})` (:func:`log_energy_feature`, in [-1, 1] for
1-100 GeV), concatenated to the latent :math:`z \sim N(0, I)`. (CaloGAN instead multiplied the
latent by :math:`E_{inc}`; the concatenated log keeps the input O(1) over two decades.) For each
layer :math:`l` a dense map makes a ``channels`` x (ny, nx) image, followed by two
:class:`~surrogate.nn.LocallyConnected2d` layers (LeakyReLU 0.2) giving one pre-activation
:math:`v_l` per cell. Then

.. math:: u_l = \mathrm{clamp}\big(\mathrm{ReLU}(v_l + a_l + \log(1000\,E_{inc} / (E_0 N)) ),\ 0,\ u_{max}\big),
          \qquad E_l = E_0\,(e^{u_l} - 1)\ \mathrm{MeV},

where :math:`N` is the number of cells (504 for CaloGAN): the offset makes an untrained generator deposit about
:math:`E_{inc}` spread over the cells and carries the trivial scaling with energy, so the
network only learns the shape. The **ReLU** gives non-negative energies and *exact zeros*
(CaloGAN also ends with a ReLU; a softplus would leave every cell non-empty and break the
sparsity observable). :math:`u_{max}` (``max_log_cell``, 14, i.e. 1.2 TeV) only guards against
overflow. **Layer-to-layer attention** (CaloGAN's "in-painting"): for :math:`l > 0`,
:math:`a_l` is an MLP of the already generated layers :math:`u_0, \dots, u_{l-1}` (and
:math:`c`), one value per cell, added in log space, i.e. the cell energies of layer :math:`l`
are multiplied by :math:`e^{a_l}`, a learned function of the previous layers (zero-initialised,
so it starts as the identity). :math:`a_0 = 0`. **Energy normalisation** (on unless
``response_hidden=0``): the streams give the shower's shape and the split between layers; a
response head, an MLP of :math:`(z, c)`, gives the response :math:`R = e^{r(z, c)}` (1 at
initialisation), and all cells are rescaled by one factor per shower so that
:math:`E_{tot} = R\,E_{inc}` exactly. The total energy, the quantity physicists check first,
is then a one-dimensional output instead of the sum of hundreds of correlated exponentials (measured:
without it a 5-minute training gives a response spread about 5 times too wide).

**Critic** (:class:`CaloGANCritic`). :meth:`~CaloGANCritic.preprocess` maps MeV cells to
:math:`u`; :meth:`~CaloGANCritic.score` runs per layer a stack of
:class:`~surrogate.nn.LocallyConnected2d` layers (LeakyReLU 0.2; the last one with stride 2; by
default a single 8-channel one, because full-resolution critic layers triple the cost of the
gradient-penalty step on a CPU), and concatenates the flattened maps with physics features computed
differentiably from the cells: per-layer energies as fractions of the incident energy
:math:`E_l / E_{inc}`, the response :math:`E_{tot}/E_{inc}` and CaloGAN's
:math:`|E_{tot} - E_{inc}| / E_{inc}`, per-layer energy shares :math:`E_l / E_{tot}`, a
differentiable sparsity per layer :math:`\frac{1}{n_l}\sum_i \tanh(E_i / E_s)` (the fraction
of cells above about :math:`E_s` = ``sparsity_scale_mev``, 0.1 MeV; exactly the fraction of
non-empty cells in the limit :math:`E_s \to 0`), and :math:`c`; an MLP gives the score.
The physics features, times ``feature_scale`` (10), are also a separate part of the critic's
input (``preprocess(showers, energy)["physics"]``): the gradient penalty then interpolates and
constrains them like the cells, which makes a 10 % error in the total energy a distance of 1
rather than of about 0.03 in the log cells, so the critic can weigh the energy response.
No batch statistics are used (no batch norm, no minibatch discrimination), because the
gradient penalty assumes a per-sample critic.

**Differences from the original CaloGAN**: WGAN-GP (Gulrajani et al. arXiv:1704.00028) instead
of the non-saturating (binary cross-entropy) GAN loss; no minibatch discrimination and no
auxiliary energy-regression head in the critic (the energy enters as a condition, and the
response features above take the role of CaloGAN's energy constraint); log-space cells and
an energy-dependent output offset instead of a linear ReLU output in GeV; the attention acts
additively in log space (multiplicatively on energies) instead of CaloGAN's in-painting
weights; no batch normalisation. The gradient penalty is taken in the critic's input space
(log cells and scaled physics features; see :class:`surrogate.train.steps.GANStep`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from surrogate.checks import check_float, check_int
from surrogate.geometry import CALOGAN, CaloGeometry, PolarLayer
from surrogate.nn.locally_connected import LocallyConnected2d, pad_rows_circular, wrapped_locally_connected

__all__ = [
    "CaloGANCritic",
    "CaloGANGenerator",
    "cells_from_log",
    "cells_to_log",
    "log_energy_feature",
]

_SLOPE = 0.2  # LeakyReLU negative slope


def log_energy_feature(energy: Tensor) -> Tensor:
    r"""The conditioning feature :math:`c = \log_{10}(E_{inc} / 10\ \mathrm{GeV})`.

    Arguments:
        energy: incident energies, :math:`(B, 1)`, GeV, > 0.

    Returns:
        :math:`(B, 1)`, in [-1, 1] for 1-100 GeV.
    """
    return torch.log10(energy / 10.0)


def cells_to_log(cells: Tensor, scale_mev: float = 1.0) -> Tensor:
    r"""Cell energies to the networks' log space, :math:`u = \log(1 + E / E_0)`.

    Arguments:
        cells: energies, any shape, MeV, >= 0.
        scale_mev: :math:`E_0`, MeV.

    Returns:
        :math:`u`, same shape.
    """
    return torch.log1p(cells / scale_mev)


def cells_from_log(u: Tensor, scale_mev: float = 1.0) -> Tensor:
    r"""The inverse of :func:`cells_to_log`: :math:`E = E_0 (e^u - 1)` in MeV."""
    return scale_mev * torch.expm1(u)


def _check_energy(energy: Tensor, batch: int | None, where: str) -> None:
    if energy.dim() != 2 or energy.shape[1] != 1 or (batch is not None and energy.shape[0] != batch):
        b = "B" if batch is None else batch
        raise ValueError(f"{where}: expected energy of shape ({b}, 1) in GeV, got {tuple(energy.shape)}")
    if not bool(torch.all(energy > 0)):
        raise ValueError(f"{where}: incident energies must be > 0 GeV, got min {float(energy.min())}")


def _check_geometry(geometry: CaloGeometry, kernel_size: int, where: str) -> dict[str, int]:
    """Rows of circular padding per layer (``kernel_size // 2`` for a polar layer with several
    angular bins, else 0)."""
    if not isinstance(geometry, CaloGeometry):
        raise ValueError(f"{where}: geometry must be a CaloGeometry, got {geometry!r}")
    wrap = {}
    for layer in geometry.layers:
        periodic = isinstance(layer, PolarLayer) and layer.n_alpha > 1
        wrap[layer.name] = kernel_size // 2 if periodic else 0
        if periodic and kernel_size // 2 > layer.n_alpha:
            raise ValueError(f"{where}: kernel_size {kernel_size} wraps further than the {layer.n_alpha} angular "
                             f"bins of layer {layer.name!r} of {geometry.describe()}; use kernel_size <= "
                             f"{2 * layer.n_alpha + 1}")
    return wrap


def _check_showers(showers, geometry: CaloGeometry, where: str) -> int:
    batch = None
    for key, shape in geometry.layer_shapes.items():
        if key not in showers:
            raise ValueError(f"{where}: missing key {key!r}; expected the layers {geometry.layer_names} of "
                             f"{geometry.describe()}")
        x = showers[key]
        if x.dim() != 3 or tuple(x.shape[1:]) != tuple(shape) or (batch is not None and x.shape[0] != batch):
            b = "B" if batch is None else batch
            raise ValueError(f"{where}: {key!r} must have shape ({b}, {shape[0]}, {shape[1]}), got {tuple(x.shape)}")
        batch = x.shape[0]
    return batch


class _Attention(nn.Module):
    """MLP from the previous layers' log cells (and c) to an additive log-space map."""

    def __init__(self, n_in: int, shape: tuple[int, int], hidden: int):
        super().__init__()
        self.shape = shape
        self.net = nn.Sequential(
            nn.Linear(n_in + 1, hidden), nn.LeakyReLU(_SLOPE), nn.Linear(hidden, shape[0] * shape[1])
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, previous: list[Tensor], cond: Tensor) -> Tensor:
        x = torch.cat([p.flatten(1) for p in previous] + [cond], dim=1)
        return self.net(x).view(-1, *self.shape)


class CaloGANGenerator(nn.Module):
    r"""Conditional generator: latent noise and incident energy to showers in MeV, layer by layer.

    See the module docstring for the architecture, conditioning, output transform, attention
    and geometries.

    Arguments:
        geometry: the calorimeter whose layers the generator fills (CaloGAN's by default).
        latent_dim: dimension of the latent :math:`z \sim N(0, I)`.
        channels: channels of each layer stream's locally connected layers.
        kernel_size: odd window of the locally connected layers (size-preserving padding).
        attention_hidden: hidden units of the layer-to-layer attention MLPs (0: no attention).
        response_hidden: hidden units of the response head (0: no energy normalisation).
        cell_scale_mev: :math:`E_0` of the log transform, MeV.
        max_log_cell: upper clamp of :math:`u` (14: 1.2 TeV per cell).

    Attributes:
        latent_dim: the latent dimension.
        geometry: the :class:`~surrogate.geometry.CaloGeometry` of the generated showers.

    Raises:
        ValueError: non-positive sizes or scales, an even kernel, a geometry that is not a
            :class:`~surrogate.geometry.CaloGeometry`, or a kernel wider than twice a polar
            layer's angular bins.

    References:
        Paganini, de Oliveira, Nachman, "CaloGAN", arXiv:1705.02355 and arXiv:1712.10321.

    Example:
        >>> g = CaloGANGenerator()
        >>> showers = g(torch.randn(4, g.latent_dim), torch.full((4, 1), 50.0))
        >>> showers["layer_0"].shape, showers["layer_1"].shape, showers["layer_2"].shape
        (torch.Size([4, 3, 96]), torch.Size([4, 12, 12]), torch.Size([4, 12, 6]))
        >>> from surrogate.geometry import CaloGeometry, PolarLayer
        >>> rings = CaloGeometry("rings", [PolarLayer("layer_0", (0.0, 5.0, 10.0, 30.0), n_alpha=10)])
        >>> CaloGANGenerator(rings).sample(torch.full((2, 1), 50.0))["layer_0"].shape  # (n_alpha, n_r)
        torch.Size([2, 10, 3])
    """

    def __init__(
        self,
        geometry: CaloGeometry = CALOGAN,
        latent_dim: int = 32,
        channels: int = 8,
        kernel_size: int = 3,
        attention_hidden: int = 32,
        response_hidden: int = 32,
        cell_scale_mev: float = 1.0,
        max_log_cell: float = 14.0,
    ):
        super().__init__()
        where = "CaloGANGenerator"
        self.latent_dim = latent_dim = check_int("latent_dim", latent_dim, minimum=1, where=where)
        self.channels = channels = check_int("channels", channels, minimum=1, where=where)
        attention_hidden = check_int("attention_hidden", attention_hidden, minimum=0, where=where)
        response_hidden = check_int("response_hidden", response_hidden, minimum=0, where=where)
        kernel_size = check_int("kernel_size", kernel_size, minimum=1, where=where)
        if kernel_size % 2 == 0:
            raise ValueError(f"CaloGANGenerator: kernel_size must be odd and >= 1, got {kernel_size}")
        self._wrap = _check_geometry(geometry, kernel_size, where)
        self.geometry = geometry
        self.cell_scale_mev = check_float("cell_scale_mev", cell_scale_mev, minimum=0, exclusive_minimum=True,
                                          unit="MeV", where=where)
        self.max_log_cell = check_float("max_log_cell", max_log_cell, minimum=0, exclusive_minimum=True, where=where)
        self.dense = nn.ModuleDict()
        self.local1 = nn.ModuleDict()
        self.local2 = nn.ModuleDict()
        self.attention = nn.ModuleDict()
        n_previous = 0
        for key, (ny, nx) in geometry.layer_shapes.items():
            self.dense[key] = nn.Linear(latent_dim + 1, channels * ny * nx)
            self.local1[key] = wrapped_locally_connected(channels, channels, (ny, nx), kernel_size, self._wrap[key])
            self.local2[key] = wrapped_locally_connected(channels, 1, (ny, nx), kernel_size, self._wrap[key])
            if n_previous and attention_hidden:
                self.attention[key] = _Attention(n_previous, (ny, nx), attention_hidden)
            n_previous += ny * nx
        if response_hidden:
            self.response = nn.Sequential(
                nn.Linear(latent_dim + 1, response_hidden), nn.LeakyReLU(_SLOPE), nn.Linear(response_hidden, 1)
            )
            nn.init.zeros_(self.response[-1].weight)  # response 1 at initialisation
            nn.init.zeros_(self.response[-1].bias)
        else:
            self.response = None

    def forward_log(self, z: Tensor, energy: Tensor) -> dict[str, Tensor]:
        r"""Generates showers in the log space :math:`u = \log(1 + E / E_0)`.

        Arguments:
            z: latent noise, :math:`(B, \text{latent\_dim})`.
            energy: incident energies, :math:`(B, 1)`, GeV, > 0.

        Returns:
            ``{layer: (B, ny, nx)}`` for the geometry's layers front to back (CaloGAN:
            ``"layer_0"`` (B, 3, 96), ``"layer_1"`` (B, 12, 12), ``"layer_2"`` (B, 12, 6)),
            :math:`u \ge 0`.

        Raises:
            ValueError: wrong shapes or non-positive energies.
        """
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"CaloGANGenerator: expected z of shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        _check_energy(energy, z.shape[0], "CaloGANGenerator")
        cond = log_energy_feature(energy)
        h = torch.cat([z, cond], dim=1)
        # log of (incident energy in MeV / E_0 / number of cells): even spread of E_inc at init.
        offset = torch.log(energy * (1000.0 / (self.cell_scale_mev * self.geometry.n_voxels))).view(-1, 1, 1)
        out: dict[str, Tensor] = {}
        for key, (ny, nx) in self.geometry.layer_shapes.items():
            wrap = self._wrap[key]
            x = F.leaky_relu(self.dense[key](h), _SLOPE).view(-1, self.channels, ny, nx)
            x = F.leaky_relu(self.local1[key](pad_rows_circular(x, wrap)), _SLOPE)
            v = self.local2[key](pad_rows_circular(x, wrap))[:, 0] + offset
            if key in self.attention:
                v = v + self.attention[key](list(out.values()), cond)
            out[key] = torch.clamp(F.relu(v), max=self.max_log_cell)
        if self.response is None:
            return out
        # Energy normalisation: rescale all cells so that E_tot = R(z, c) * E_inc exactly.
        cells = {k: cells_from_log(u, self.cell_scale_mev) for k, u in out.items()}
        total = sum(c.flatten(1).sum(1) for c in cells.values()).view(-1, 1, 1)  # (B, 1, 1) MeV
        target = torch.exp(self.response(h)).view(-1, 1, 1) * (1000.0 * energy.view(-1, 1, 1))
        factor = target / total.clamp_min(self.cell_scale_mev)  # an empty shower stays empty
        return {
            k: torch.clamp(cells_to_log(c * factor, self.cell_scale_mev), max=self.max_log_cell)
            for k, c in cells.items()
        }

    def forward(self, z: Tensor, energy: Tensor) -> dict[str, Tensor]:
        r"""Generates showers.

        Arguments:
            z: latent noise, :math:`(B, \text{latent\_dim})`.
            energy: incident energies, :math:`(B, 1)`, GeV, > 0.

        Returns:
            Cell energies in MeV, all >= 0: ``{layer: (B, ny, nx)}`` for the geometry's layers
            (CaloGAN: ``"layer_0"`` (B, 3, 96), ``"layer_1"`` (B, 12, 12), ``"layer_2"`` (B, 12, 6)).

        Raises:
            ValueError: wrong shapes or non-positive energies.
        """
        return {k: cells_from_log(u, self.cell_scale_mev) for k, u in self.forward_log(z, energy).items()}

    def sample(self, energy: Tensor) -> dict[str, Tensor]:
        r"""Generates one shower per incident energy with :math:`z` from torch's global generator.

        Arguments:
            energy: incident energies, :math:`(B, 1)`, GeV, > 0.

        Returns:
            As :meth:`forward`.
        """
        z = torch.randn(energy.shape[0], self.latent_dim).to(energy.device)
        return self(z, energy)


class CaloGANCritic(nn.Module):
    r"""Conditional WGAN critic on showers (layer by layer) and physics features.

    See the module docstring for the architecture, the features and the geometries. The critic's input space
    (where the gradient penalty is taken) is the dict returned by :meth:`preprocess`: the
    log cells :math:`u` of each layer and, with ``feature_scale > 0``, the physics features
    times ``feature_scale`` as a separate entry ``"physics"``.

    Arguments:
        geometry: the calorimeter whose showers the critic scores (CaloGAN's by default).
        channels: output channels of each layer stream's locally connected layers, in order;
            the last one has stride 2, the others stride 1.
        kernel_size: odd window of the locally connected layers (padding ``kernel_size // 2``).
        hidden: hidden units of the two-layer MLP head.
        cell_scale_mev: :math:`E_0` of the log transform, MeV.
        sparsity_scale_mev: :math:`E_s` of the differentiable sparsity, MeV.
        feature_scale: :math:`s`. If > 0, the physics features are part of the critic's input
            (interpolated and penalised like the cells), scaled by :math:`s`: a 10 % error in
            the response is then a distance of :math:`0.1 s` (1 by default) in the critic's
            input space; in :math:`u` alone it is only about 0.03, so a 1-Lipschitz critic
            can hardly weigh it. If 0, the features are recomputed from :math:`u` inside
            :meth:`score` and the penalty sees the cells only.

    Attributes:
        geometry: the :class:`~surrogate.geometry.CaloGeometry` of the scored showers.
        n_physics_features: :math:`3L + 2` for :math:`L` layers (11 for CaloGAN).

    Raises:
        ValueError: non-positive sizes or scales, negative ``feature_scale``, an even kernel, a
            geometry that is not a :class:`~surrogate.geometry.CaloGeometry`, or a kernel wider
            than twice a polar layer's angular bins.

    References:
        Paganini, de Oliveira, Nachman, arXiv:1705.02355 and arXiv:1712.10321 (architecture,
        physics features); Gulrajani et al., arXiv:1704.00028 (per-sample critic for WGAN-GP).

    Example:
        >>> d = CaloGANCritic()
        >>> showers = {"layer_0": torch.rand(4, 3, 96), "layer_1": torch.rand(4, 12, 12),
        ...            "layer_2": torch.rand(4, 12, 6)}
        >>> d(showers, torch.full((4, 1), 50.0)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        geometry: CaloGeometry = CALOGAN,
        channels: tuple[int, ...] = (8,),
        kernel_size: int = 3,
        hidden: int = 64,
        cell_scale_mev: float = 1.0,
        sparsity_scale_mev: float = 0.1,
        feature_scale: float = 10.0,
    ):
        super().__init__()
        where = "CaloGANCritic"
        channels = tuple(channels)
        if not channels:
            raise ValueError(f"CaloGANCritic: channels must be one or more ints >= 1, got {channels}")
        channels = tuple(check_int(f"channels[{i}]", c, minimum=1, where=where) for i, c in enumerate(channels))
        hidden = check_int("hidden", hidden, minimum=1, where=where)
        kernel_size = check_int("kernel_size", kernel_size, minimum=1, where=where)
        if kernel_size % 2 == 0:
            raise ValueError(f"CaloGANCritic: kernel_size must be odd and >= 1, got {kernel_size}")
        self._wrap = _check_geometry(geometry, kernel_size, where)
        self.geometry = geometry
        self.n_physics_features = 3 * geometry.n_layers + 2
        self.cell_scale_mev = check_float("cell_scale_mev", cell_scale_mev, minimum=0, exclusive_minimum=True,
                                          unit="MeV", where=where)
        self.sparsity_scale_mev = check_float("sparsity_scale_mev", sparsity_scale_mev, minimum=0,
                                              exclusive_minimum=True, unit="MeV", where=where)
        self.feature_scale = check_float("feature_scale", feature_scale, minimum=0, where=where)
        self.streams = nn.ModuleDict()
        n_flat = 0
        for key, shape in geometry.layer_shapes.items():
            layers, size, previous = [], tuple(shape), 1
            for i, c in enumerate(channels):
                stride = 2 if i == len(channels) - 1 else 1
                # after a strided layer the grid no longer maps onto the angular bins: zero padding
                wrap = self._wrap[key] if size == tuple(shape) else 0
                layers.append(wrapped_locally_connected(previous, c, size, kernel_size, wrap, stride=stride))
                layers.append(nn.LeakyReLU(_SLOPE))
                size, previous = layers[-2].output_size, c
            self.streams[key] = nn.Sequential(*layers)
            n_flat += previous * size[0] * size[1]
        self.head = nn.Sequential(
            nn.Linear(n_flat + self.n_physics_features + 1, hidden), nn.LeakyReLU(_SLOPE),
            nn.Linear(hidden, hidden), nn.LeakyReLU(_SLOPE),
            nn.Linear(hidden, 1),
        )

    def preprocess(self, showers, energy: Tensor) -> dict[str, Tensor]:
        r"""MeV cells to the critic's input space.

        Arguments:
            showers: ``{layer: (B, ny, nx)}`` for every layer of the geometry (CaloGAN:
                ``"layer_0"`` (B, 3, 96), ``"layer_1"`` (B, 12, 12), ``"layer_2"`` (B, 12, 6)),
                MeV (other keys are ignored).
            energy: incident energies, :math:`(B, 1)`, GeV, > 0.

        Returns:
            Dict with the layers in :math:`u = \log(1 + E / E_0)` and, if
            ``feature_scale > 0``, ``"physics"``: ``feature_scale`` x
            :meth:`physics_features`, :math:`(B, 3L + 2)`.

        Raises:
            ValueError: a layer is missing or has the wrong shape, or bad energies.
        """
        batch = _check_showers(showers, self.geometry, "CaloGANCritic")
        _check_energy(energy, batch, "CaloGANCritic")
        x = {k: cells_to_log(showers[k], self.cell_scale_mev) for k in self.geometry.layer_names}
        if self.feature_scale > 0:
            x["physics"] = self.feature_scale * self.physics_features(x, energy)
        return x

    def physics_features(self, u: dict[str, Tensor], energy: Tensor) -> Tensor:
        r"""The differentiable physics features (see the module docstring).

        Arguments:
            u: dict of the log cells :math:`u` of the geometry's :math:`L` layers.
            energy: incident energies, :math:`(B, 1)`, GeV.

        Returns:
            :math:`(B, 3L + 2)`: :math:`E_l/E_{inc}` (L), :math:`E_{tot}/E_{inc}`,
            :math:`|E_{tot} - E_{inc}|/E_{inc}`, :math:`E_l/(E_{tot} + E_0)` (L), sparsity (L).
        """
        e_inc = energy * 1000.0  # MeV
        names = self.geometry.layer_names
        cells = {k: cells_from_log(u[k], self.cell_scale_mev) for k in names}
        layer_e = torch.stack([cells[k].flatten(1).sum(1) for k in names], dim=1)  # (B, L) MeV
        total = layer_e.sum(1, keepdim=True)
        response = total / e_inc
        shares = layer_e / (total + self.cell_scale_mev)  # + E_0: finite for empty showers
        sparsity = torch.stack(
            [torch.tanh(cells[k] / self.sparsity_scale_mev).flatten(1).mean(1) for k in names], dim=1
        )
        return torch.cat([layer_e / e_inc, response, (response - 1).abs(), shares, sparsity], dim=1)

    def score(self, x: dict[str, Tensor], energy: Tensor) -> Tensor:
        r"""Critic scores of preprocessed showers.

        Arguments:
            x: as returned by :meth:`preprocess` (the gradient penalty's input space).
            energy: incident energies, :math:`(B, 1)`, GeV, > 0.

        Returns:
            Scores, :math:`(B,)` (higher: more data-like).
        """
        flat = [self._stream(key, x[key].unsqueeze(1)).flatten(1) for key in self.geometry.layer_names]
        if self.feature_scale > 0:
            physics = x["physics"]
        else:
            physics = self.physics_features(x, energy)
        features = torch.cat(flat + [physics, log_energy_feature(energy)], dim=1)
        return self.head(features).squeeze(1)

    def _stream(self, key: str, x: Tensor) -> Tensor:
        """Layer ``key``'s stream on ``x`` (B, 1, ny, nx), circular padding before each locally
        connected layer built for it."""
        for module in self.streams[key]:
            if isinstance(module, LocallyConnected2d):
                x = pad_rows_circular(x, (module.input_size[0] - x.shape[-2]) // 2)
            x = module(x)
        return x

    def forward(self, showers, energy: Tensor, *, preprocessed: bool = False) -> Tensor:
        r"""Critic scores of showers in MeV.

        Arguments:
            showers: ``{layer: (B, ny, nx)}`` in MeV for every layer of the geometry; or, with
                ``preprocessed=True``, the output of :meth:`preprocess` (so that a
                ``DistributedDataParallel`` wrapper can score the gradient penalty's
                interpolates through its own ``forward``).
            energy: incident energies, :math:`(B, 1)`, GeV, > 0.
            preprocessed: ``showers`` is already in the critic's input space.

        Returns:
            Scores, :math:`(B,)`.

        Raises:
            ValueError: wrong shapes or non-positive energies.
        """
        if preprocessed:
            return self.score(showers, energy)
        return self.score(self.preprocess(showers, energy), energy)
