r"""CaloFlow-style conditional normalizing flow for calorimeter showers, with an exact likelihood.

Two flows as in CaloFlow (Krause & Shih, arXiv:2106.05285): **flow I** models how the energy
is shared among the readout layers given the incident energy, **flow II** how each layer's
energy is shared among its cells given the layer energies and the incident energy. Both are
stacks of rational-quadratic spline *coupling* blocks (Durkan et al., arXiv:1906.04032), so
sampling is one pass per block (CaloFlow's teacher was autoregressive; its student,
arXiv:2110.11377, was made for speed). The layers come from a
:class:`~surrogate.geometry.CaloGeometry` (default :data:`~surrogate.geometry.CALOGAN`).

**Empty cells and the readout threshold.** Data cells below ``threshold_mev`` are zero.
:meth:`CaloFlow.dequantize` zeroes them and adds uniform noise on every cell,
:math:`y = x + \delta (1 - u)`, :math:`u \sim U[0, 1)`, so an empty cell becomes
:math:`y \in (0, \delta]` and a hit cell :math:`y \in (x, x + \delta]` (CaloFlow's dequantisation;
defaults :math:`\delta` = 1 keV and threshold 10 keV, the values of the CaloFlow code for the
CaloChallenge, arXiv:2210.14245). The model is a density on :math:`y \in (0, \infty)^N`.
:meth:`CaloFlow.sample` maps every sampled cell with :math:`y <` ``threshold_mev`` to exactly 0
(:math:`\delta \le` threshold, so the noise of empty cells never survives), which removes the
small deposits a flow spreads over cells that should be empty. By Jensen's inequality,
:math:`E_u[\log p(x + \delta(1-u))] + N \log \delta` is a lower bound on the log-probability of
the box :math:`x + (0, \delta]^N` (Theis et al., arXiv:1511.01844).

**Change of variables** (:meth:`CaloFlow.to_latent`). Cells :math:`y_{l,i} > 0` in MeV of layer
:math:`l = 1..L` with :math:`n_l` cells (row-major order), incident energy :math:`E` in GeV:

1. Per-layer normalisation by stick breaking: :math:`R_{l,i} = \sum_{j \ge i} y_{l,j}`,
   layer energy :math:`E_l = R_{l,1}`, fractions :math:`v_{l,i} = y_{l,i} / R_{l,i} \in (0, 1)`
   for :math:`i < n_l`. This is a bijection :math:`(0,\infty)^{n_l} \to (0,\infty) \times (0,1)^{n_l-1}`
   (the normalised cells :math:`y_{l,i}/E_l` sum to 1, so only :math:`n_l - 1` of them are free,
   and the fractions of the remaining energy have no further constraint), with
   :math:`|\partial y_l / \partial(E_l, v_l)| = \prod_{i<n_l} R_{l,i}`.
2. The same over layers: :math:`Q_l = \sum_{k \ge l} E_k`, total :math:`T = Q_1`,
   :math:`w_l = E_l / Q_l` for :math:`l < L` (CaloFlow's :math:`u_2, u_3`);
   :math:`|\partial E / \partial(T, w)| = \prod_{l<L} Q_l`.
3. :math:`t = \log(T / 1000 E)`, :math:`|dT/dt| = T`. (CaloFlow takes a logit of :math:`T`
   over a constant multiple of :math:`E`, clamped into [0, 1]; our GFlash stand-in deposits up
   to 1.11 E, and the log ratio needs no bound.)
4. Every fraction :math:`f \in \{v, w\}` goes through the logit
   :math:`a = \mathrm{logit}(\alpha + (1 - 2\alpha) f)`, computed as
   :math:`\log(\alpha R + (1-2\alpha) y) - \log(\alpha R + (1-2\alpha) R')` from the energies
   (:math:`R'` the energy after the cell), finite for every positive cell;
   :math:`|df/da| = x'(1 - x') / (1 - 2\alpha)` with :math:`x' = \alpha + (1-2\alpha) f`.
5. Flow I: :math:`z_I = F_I(t, a_w;\ c)`, :math:`c = \log_{10}(E / 10\,\mathrm{GeV})`; flow II:
   :math:`z_{II} = F_{II}(a_v;\ c, \log_{10}(E_l / 1\,\mathrm{GeV}))`; base :math:`N(0, I_N)`.

Hence, in nats per shower and per MeV\ :sup:`N`,

.. math::

    \log p(y \mid E) = \log N(z_I) + \log|\det \partial F_I| + \log N(z_{II}) + \log|\det \partial F_{II}|
      - \log T - \sum_{l<L} \log Q_l - \sum_l \sum_{i<n_l} \log R_{l,i}
      + \sum_f \big[\log(1 - 2\alpha) - \log x'_f - \log(1 - x'_f)\big].

With :math:`\alpha = 0` (the default) the preprocessing terms add up to :math:`-\sum \log y`:
the features are log-ratios of cell energies, a map of unit Jacobian from :math:`\log y`.
**Why α = 0 by default**: for :math:`\alpha > 0` (CaloFlow: :math:`10^{-6}`) the logit maps
:math:`(0, 1)` onto the bounded :math:`(\mathrm{logit}\,\alpha, \mathrm{logit}(1-\alpha))`, while a
flow puts mass on all of :math:`\mathbb{R}`: :meth:`~CaloFlow.log_prob` is then exact inside but
integrates to less than 1 (the mass outside is sampled as clamped fractions, i.e. empty cells).
Dequantisation already keeps every logit finite, so :math:`\alpha` is not needed for numerics.
Features of empty cells lie near :math:`\log(\delta / R) \approx -20` (GFlash CaloGAN showers:
cell features between -28 and +13, 98 % of them in [-20, 2]), hence the wide default
``tail_bound`` of the cell flow (30; the splines are the identity outside it).

Example:
    >>> import torch
    >>> flow = CaloFlow(hidden_features=16, num_transforms=2, energy_hidden_features=8)
    >>> energy = torch.tensor([[10.0], [50.0]])
    >>> showers = flow.sample(energy, generator=torch.Generator().manual_seed(0))
    >>> tuple(showers["layer_1"].shape)
    (2, 12, 12)
    >>> flow.log_prob(flow.dequantize(showers), energy).shape
    torch.Size([2])

References:
    Krause & Shih (2021), "CaloFlow", arXiv:2106.05285; "CaloFlow II", arXiv:2110.11377.
    Krause, Pang & Shih (2022), "CaloFlow for CaloChallenge Dataset 1", arXiv:2210.14245.
    Durkan, Bekasov, Murray & Papamakarios (2019), "Neural Spline Flows", arXiv:1906.04032.
    Theis, van den Oord & Bethge (2016), "A note on the evaluation of generative models"
    (dequantisation bound), arXiv:1511.01844.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from nflows import transforms as T
from nflows.nn.nets import ResidualNet
from nflows.utils import create_alternating_binary_mask
from torch import Tensor, nn

from surrogate.checks import check_choice, check_float, check_int
from surrogate.geometry import CALOGAN, CaloGeometry
from surrogate.models.flows import LULinear
from surrogate.models.splines import RQSCouplingTransform

__all__ = ["CELL_MIXING", "CaloFlow"]

CELL_MIXING = ("random", "lu")
"""Mixing between two coupling blocks of the cell flow: a fixed seeded random permutation
(no parameters) or a trainable :class:`~surrogate.models.flows.LULinear` (D² parameters)."""

_LOG_2PI = math.log(2.0 * math.pi)


def _energy_feature(energy: Tensor) -> Tensor:
    """``(B, 1)``: log10(E / 10 GeV), in [-1, 1] for 1-100 GeV (CaloGAN's range)."""
    return torch.log10(energy / 10.0)


def _residual_net(in_features: int, out_features: int, **kwargs) -> ResidualNet:
    return ResidualNet(in_features, out_features, use_batch_norm=False, **kwargs)


def _spline_coupling_flow(features: int, context_features: int, *, hidden_features: int, num_transforms: int,
                          num_blocks: int, num_bins: int, tail_bound: float, mixing: str,
                          dropout_probability: float, generator: torch.Generator) -> T.CompositeTransform:
    """Rational-quadratic spline coupling blocks (linear tails) with a mixing layer between blocks.

    Alternating halves are transformed, conditioned on the other half and the context by a
    residual net; with ``features == 1`` the single variable is transformed by a spline whose
    parameters depend on the context only (a coupling block with an empty identity half).
    """
    blocks: list[T.Transform] = []
    for i in range(num_transforms):
        mask = torch.ones(1) if features == 1 else create_alternating_binary_mask(features, even=(i % 2 == 0))
        net = partial(_residual_net, hidden_features=hidden_features, context_features=context_features,
                      num_blocks=num_blocks, dropout_probability=dropout_probability)
        blocks.append(RQSCouplingTransform(
            mask=mask, transform_net_create_fn=net, num_bins=num_bins, tails="linear", tail_bound=tail_bound))
        if features > 1 and i < num_transforms - 1:
            blocks.append(LULinear(features) if mixing == "lu"
                          else T.Permutation(torch.randperm(features, generator=generator)))
    return T.CompositeTransform(blocks)


def _break_stick(parts: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Stick breaking of positive parts ``(B, n)`` into their sum and ``n - 1`` squeezed logits.

    Returns:
        ``(total (B,), logits (B, n - 1), log|det d(total, logits) / d parts| (B,))``.
    """
    remaining = parts.flip(-1).cumsum(-1).flip(-1)  # R_i = sum_{j >= i} parts_j
    before, part, after = remaining[:, :-1], parts[:, :-1], remaining[:, 1:]
    log_before = before.log()
    log_x = torch.log(alpha * before + (1.0 - 2.0 * alpha) * part) - log_before  # log x'
    log_1mx = torch.log(alpha * before + (1.0 - 2.0 * alpha) * after) - log_before  # log(1 - x')
    log_det = (math.log1p(-2.0 * alpha) - log_x - log_1mx - log_before).sum(-1)
    return remaining[:, 0], log_x - log_1mx, log_det


def _join_stick(total: Tensor, logits: Tensor, alpha: float) -> Tensor:
    """Inverse of :func:`_break_stick`: ``total (B,)`` and ``logits (B, n - 1)`` to parts ``(B, n)``.

    For ``alpha > 0`` logits outside ``(logit alpha, logit(1 - alpha))`` give fractions clamped
    to 0 or 1 (parts exactly 0).
    """
    if alpha == 0.0:
        log_f, log_1mf = F.logsigmoid(logits), F.logsigmoid(-logits)
    else:
        scale = 1.0 - 2.0 * alpha
        log_f = ((torch.sigmoid(logits) - alpha) / scale).clamp(0.0, 1.0).log()
        log_1mf = ((torch.sigmoid(-logits) - alpha) / scale).clamp(0.0, 1.0).log()
    zero = logits.new_zeros(logits.shape[0], 1)
    log_remaining = total.log()[:, None] + torch.cat([zero, log_1mf.cumsum(-1)], dim=-1)
    return torch.cat([log_remaining[:, :-1] + log_f, log_remaining[:, -1:]], dim=-1).exp()


class CaloFlow(nn.Module):
    r"""Two conditional spline flows over a calorimeter's cells: ``p(cells | incident energy)``.

    See the module docstring for the change of variables and every Jacobian term.

    Arguments:
        geometry: the calorimeter; its layers (names, cell grids) fix the cell variables.
        hidden_features: width of the conditioner nets of the cell flow (flow II).
        num_transforms: coupling blocks of the cell flow.
        num_blocks: residual blocks per conditioner net (both flows).
        num_bins: spline bins (both flows; CaloFlow: 8).
        tail_bound: the cell flow's splines act on ``[-tail_bound, tail_bound]`` (identity
            outside), in logit units of the cell fractions.
        energy_hidden_features: width of the conditioner nets of the layer-energy flow (flow I).
        energy_num_transforms: coupling blocks of the layer-energy flow.
        energy_tail_bound: spline range of the layer-energy flow.
        mixing: between the cell flow's blocks, one of :data:`CELL_MIXING` (the layer-energy
            flow always uses :class:`~surrogate.models.flows.LULinear`).
        alpha: squeeze of the logit, in ``[0, 0.5)``; 0 keeps the density normalised (module
            docstring), CaloFlow used 1e-6.
        threshold_mev: readout threshold in MeV: cells below it are 0 in dequantised data and
            in samples.
        noise_mev: dequantisation noise scale :math:`\delta` in MeV, ``0 < noise_mev <= threshold_mev``.
        dropout_probability: dropout in the conditioner nets.
        seed: seeds the initial parameters and the permutations (built inside
            ``torch.random.fork_rng``: torch's global generator is left as it was).

    Raises:
        ValueError: non-positive sizes or bounds, ``alpha`` outside ``[0, 0.5)``, ``noise_mev``
            not in ``(0, threshold_mev]``, an unknown ``mixing``, a negative ``seed`` or a
            ``geometry`` that is not a :class:`~surrogate.geometry.CaloGeometry`.

    References:
        Krause & Shih, arXiv:2106.05285; Durkan et al., arXiv:1906.04032.
    """

    def __init__(
        self,
        geometry: CaloGeometry = CALOGAN,
        *,
        hidden_features: int = 128,
        num_transforms: int = 4,
        num_blocks: int = 1,
        num_bins: int = 8,
        tail_bound: float = 30.0,
        energy_hidden_features: int = 64,
        energy_num_transforms: int = 4,
        energy_tail_bound: float = 10.0,
        mixing: str = "random",
        alpha: float = 0.0,
        threshold_mev: float = 0.01,
        noise_mev: float = 0.001,
        dropout_probability: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        where = "CaloFlow"
        if not isinstance(geometry, CaloGeometry):
            raise ValueError(f"{where}: geometry must be a CaloGeometry, got {type(geometry).__name__}")
        sizes = {name: check_int(name, value, minimum=1, where=where) for name, value in (
            ("hidden_features", hidden_features), ("num_transforms", num_transforms), ("num_blocks", num_blocks),
            ("num_bins", num_bins), ("energy_hidden_features", energy_hidden_features),
            ("energy_num_transforms", energy_num_transforms))}
        bounds = [check_float(name, value, minimum=0.0, exclusive_minimum=True, where=where)
                  for name, value in (("tail_bound", tail_bound), ("energy_tail_bound", energy_tail_bound))]
        check_choice("mixing", mixing, CELL_MIXING, where=where)
        self.alpha = check_float("alpha", alpha, minimum=0.0, maximum=0.5, exclusive_maximum=True, where=where)
        self.threshold_mev = check_float("threshold_mev", threshold_mev, minimum=0.0, exclusive_minimum=True,
                                         unit="MeV", where=where)
        self.noise_mev = check_float("noise_mev", noise_mev, minimum=0.0, maximum=self.threshold_mev,
                                     exclusive_minimum=True, unit="MeV (at most threshold_mev)", where=where)
        dropout = check_float("dropout_probability", dropout_probability, minimum=0.0, maximum=1.0,
                              exclusive_maximum=True, where=where)
        check_int("seed", seed, minimum=0, where=where)
        self.geometry = geometry
        self.layer_names = geometry.layer_names
        self.layer_shapes = {layer.name: layer.shape for layer in geometry.layers}
        self.num_cells = geometry.n_voxels
        num_layers = geometry.n_layers
        common = dict(num_blocks=sizes["num_blocks"], num_bins=sizes["num_bins"], dropout_probability=dropout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            self.energy_flow = _spline_coupling_flow(
                num_layers, 1, hidden_features=sizes["energy_hidden_features"],
                num_transforms=sizes["energy_num_transforms"], tail_bound=bounds[1], mixing="lu",
                generator=generator, **common)
            cell_features = self.num_cells - num_layers
            self.cell_flow = None if cell_features == 0 else _spline_coupling_flow(
                cell_features, 1 + num_layers, hidden_features=sizes["hidden_features"],
                num_transforms=sizes["num_transforms"], tail_bound=bounds[0], mixing=mixing,
                generator=generator, **common)

    # ----------------------------------------------------------------------------- checks
    def _check_energy(self, energy: Tensor) -> Tensor:
        if not isinstance(energy, Tensor) or energy.dim() != 2 or energy.shape[1] != 1:
            shape = tuple(energy.shape) if isinstance(energy, Tensor) else type(energy).__name__
            raise ValueError(f"CaloFlow: energy must be a tensor of shape (B, 1) in GeV, got {shape}")
        if not bool(torch.isfinite(energy).all()) or not bool((energy > 0).all()):
            raise ValueError(f"CaloFlow: energy must be finite and > 0 GeV, got values "
                             f"{energy.flatten()[:8].tolist()}")
        return energy

    def _check_showers(self, showers: Mapping[str, Tensor], batch: int | str, *, positive: bool) -> None:
        if not isinstance(showers, Mapping):
            raise ValueError(f"CaloFlow: showers must be a dict of layers {self.layer_names}, "
                             f"got {type(showers).__name__}")
        for name in self.layer_names:
            if name not in showers:
                raise ValueError(f"CaloFlow: showers lack layer {name!r}; expected layers {self.layer_names}")
            cells, expected = showers[name], (batch, *self.layer_shapes[name])
            if not isinstance(cells, Tensor) or tuple(cells.shape) != expected:
                shape = tuple(cells.shape) if isinstance(cells, Tensor) else type(cells).__name__
                raise ValueError(f"CaloFlow: showers[{name!r}] must have shape {expected} (MeV), got {shape}")
            low_ok = (cells > 0).all() if positive else (cells >= 0).all()
            if not bool(torch.isfinite(cells).all()) or not bool(low_ok):
                hint = " (log_prob needs dequantised showers: call dequantize first)" if positive else ""
                raise ValueError(f"CaloFlow: showers[{name!r}] must be finite and {'> 0' if positive else '>= 0'} "
                                 f"MeV{hint}, got min {float(cells.min())}")

    # ------------------------------------------------------------------------ data space
    def apply_threshold(self, showers: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Sets every cell below ``threshold_mev`` to 0.

        Arguments:
            showers: ``{layer: (B, *shape)}`` cell energies in MeV (other keys are ignored).

        Returns:
            ``{layer: (B, *shape)}`` in MeV, the geometry's layers only.
        """
        return {name: torch.where(showers[name] >= self.threshold_mev, showers[name], 0.0)
                for name in self.layer_names}

    def dequantize(self, showers: Mapping[str, Tensor], *, generator: torch.Generator | None = None
                   ) -> dict[str, Tensor]:
        r"""Zeroes cells below the threshold, then adds :math:`\delta (1 - u)`, :math:`u \sim U[0, 1)`.

        Arguments:
            showers: ``{layer: (B, *shape)}`` cell energies in MeV, >= 0 (other keys, e.g.
                ``"energy"``, are ignored).
            generator: source of the noise (torch's global generator when ``None``).

        Returns:
            ``{layer: (B, *shape)}`` in MeV, every cell > 0: empty cells in ``(0, noise_mev]``.

        Raises:
            ValueError: missing layers, wrong shapes, negative or non-finite cells.
        """
        first = showers.get(self.layer_names[0]) if isinstance(showers, Mapping) else None
        batch = first.shape[0] if isinstance(first, Tensor) and first.dim() > 0 else "B"
        self._check_showers(showers, batch, positive=False)
        out = {}
        for name, cells in self.apply_threshold(showers).items():
            device = generator.device if generator is not None else cells.device
            u = torch.rand(cells.shape, generator=generator, dtype=cells.dtype, device=device).to(cells.device)
            out[name] = cells + self.noise_mev * (1.0 - u)
        return out

    # -------------------------------------------------------------------------- the flows
    def _cell_context(self, layer_energy: Tensor, energy: Tensor) -> Tensor:
        """``(B, 1 + L)``: log10(E / 10 GeV) and log10 of the layer energies in GeV."""
        return torch.cat([_energy_feature(energy), torch.log10(layer_energy / 1000.0)], dim=-1)

    def to_latent(self, showers: Mapping[str, Tensor], energy: Tensor) -> tuple[Tensor, Tensor]:
        r"""The bijection from dequantised cells to the flows' standard normal base.

        Arguments:
            showers: ``{layer: (B, *shape)}`` dequantised cell energies in MeV, all > 0.
            energy: incident energies ``(B, 1)`` in GeV.

        Returns:
            ``(z, log_det)``: ``z`` ``(B, N)`` (flow I's ``L`` variables, then flow II's
            ``N - L``) and :math:`\log|\det \partial z / \partial y|` ``(B,)``, ``y`` in MeV.

        Raises:
            ValueError: bad shapes, non-finite or non-positive energies or cells.
        """
        energy = self._check_energy(energy)
        batch = energy.shape[0]
        self._check_showers(showers, batch, positive=True)
        layer_energy, cell_logits, log_det = [], [], energy.new_zeros(batch)
        for name in self.layer_names:
            total, logits, jac = _break_stick(showers[name].reshape(batch, -1), self.alpha)
            layer_energy.append(total)
            cell_logits.append(logits)
            log_det = log_det + jac
        layer_energy = torch.stack(layer_energy, dim=-1)
        total, layer_logits, jac = _break_stick(layer_energy, self.alpha)
        log_total_ratio = total.log() - torch.log(1000.0 * energy[:, 0])
        log_det = log_det + jac - total.log()
        z_energy, jac = self.energy_flow(torch.cat([log_total_ratio[:, None], layer_logits], dim=-1),
                                         context=_energy_feature(energy))
        log_det = log_det + jac
        z_cells = torch.cat(cell_logits, dim=-1)
        if self.cell_flow is not None:
            z_cells, jac = self.cell_flow(z_cells, context=self._cell_context(layer_energy, energy))
            log_det = log_det + jac
        return torch.cat([z_energy, z_cells], dim=-1), log_det

    def from_latent(self, z: Tensor, energy: Tensor) -> dict[str, Tensor]:
        """The inverse of :meth:`to_latent` (no threshold applied).

        Arguments:
            z: base variables ``(B, N)``.
            energy: incident energies ``(B, 1)`` in GeV.

        Returns:
            ``{layer: (B, *shape)}`` cell energies in MeV, >= 0.

        Raises:
            ValueError: bad shapes or energies.
        """
        energy = self._check_energy(energy)
        batch, num_layers = energy.shape[0], len(self.layer_names)
        if not isinstance(z, Tensor) or tuple(z.shape) != (batch, self.num_cells):
            raise ValueError(f"CaloFlow: z must have shape ({batch}, {self.num_cells}), got "
                             f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__}")
        features, _ = self.energy_flow.inverse(z[:, :num_layers], context=_energy_feature(energy))
        total = torch.exp(features[:, 0]) * 1000.0 * energy[:, 0]
        layer_energy = _join_stick(total, features[:, 1:], self.alpha)
        cell_logits = z[:, num_layers:]
        if self.cell_flow is not None:
            cell_logits, _ = self.cell_flow.inverse(cell_logits, context=self._cell_context(layer_energy, energy))
        showers, start = {}, 0
        for index, name in enumerate(self.layer_names):
            shape = self.layer_shapes[name]
            count = shape[0] * shape[1] - 1
            cells = _join_stick(layer_energy[:, index], cell_logits[:, start:start + count], self.alpha)
            showers[name] = cells.reshape(batch, *shape)
            start += count
        return showers

    def log_prob(self, showers: Mapping[str, Tensor], energy: Tensor) -> Tensor:
        r"""Exact :math:`\log p(y \mid E)` of dequantised showers, nats per shower (density per MeV\ :sup:`N`).

        Arguments:
            showers: ``{layer: (B, *shape)}`` dequantised cell energies in MeV, all > 0 (see
                :meth:`dequantize`).
            energy: incident energies ``(B, 1)`` in GeV.

        Returns:
            ``(B,)``: the log density, every preprocessing Jacobian included (module docstring).

        Raises:
            ValueError: bad shapes, non-finite or non-positive energies or cells.
        """
        z, log_det = self.to_latent(showers, energy)
        return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * _LOG_2PI) + log_det

    def forward(self, showers: Mapping[str, Tensor], energy: Tensor) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(showers, energy)

    @torch.no_grad()
    def sample(self, energy: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draws one shower per incident energy (no gradients), cells below the threshold set to 0.

        Arguments:
            energy: incident energies ``(B, 1)`` in GeV.
            generator: source of the base noise (torch's global generator when ``None``); the
                same generator state gives the same showers.

        Returns:
            ``{layer: (B, *shape)}`` cell energies in MeV: 0 or >= ``threshold_mev``.

        Raises:
            ValueError: ``energy`` not ``(B, 1)``, not finite or not > 0.
        """
        energy = self._check_energy(energy)
        device = generator.device if generator is not None else energy.device
        z = torch.randn((energy.shape[0], self.num_cells), generator=generator, dtype=energy.dtype, device=device)
        return self.apply_threshold(self.from_latent(z.to(energy.device), energy))
