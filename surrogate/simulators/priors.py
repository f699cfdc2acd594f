"""Priors over simulator parameters, built from a pipeline file's ``[prior]`` table.

A prior is a :class:`torch.distributions.Distribution` with event shape ``(D,)``: ``sample``,
``log_prob`` and a ``support`` whose ``check`` tells which parameters are possible (the NPE
posterior rejects samples outside it, :class:`surrogate.models.npe.NeuralPosterior`).

Two forms of the table, one kind for every dimension (``kind`` with arrays of length ``D``) or
one table per dimension (``[[prior.parameters]]`` with numbers)::

    [prior]                                  [[prior.parameters]]
    kind = "uniform"                         name = "beta"            # optional label
    low = [-1.0, -1.0]                       kind = "lognormal"
    high = [1.0, 1.0]                        loc = -0.916             # of log(beta)
    names = ["a", "b"]   # optional          scale = 0.5
                                             [[prior.parameters]]
                                             name = "gamma"
                                             kind = "loguniform"
                                             low = 0.01
                                             high = 1.0

Kinds and their keys: ``uniform`` (``low``, ``high``; support ``[low, high]``), ``loguniform``
(``low``, ``high`` > 0; ``log theta`` uniform; support ``[low, high]``), ``normal`` (``loc``,
``scale``; support all reals) and ``lognormal`` (``loc``, ``scale`` of ``log theta``; support
``theta > 0``). A correlated Gaussian is ``kind = "normal"`` with ``loc`` and ``covariance``
(a ``D x D`` array) instead of ``scale``. Every error names the key: ``[prior] high``,
``[prior] parameters[1] scale``.

Example:
    >>> prior = prior_from_table({"kind": "uniform", "low": [0.0, -1.0], "high": [1.0, 1.0]})
    >>> prior.event_shape, prior.sample((5,)).shape
    (torch.Size([2]), torch.Size([5, 2]))
    >>> prior.support.check(torch.tensor([[0.5, 0.0], [2.0, 0.0]]))
    tensor([ True, False])
    >>> prior_names({"kind": "normal", "loc": [0.0], "scale": [1.0]})
    ['theta_1']
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, LogNormal, MultivariateNormal, Normal, Uniform, constraints
from torch.distributions.transforms import ExpTransform

__all__ = ["PRIOR_KINDS", "LogUniform", "ProductPrior", "prior_from_table", "prior_names"]

PRIOR_KINDS = {"uniform": ("low", "high"), "loguniform": ("low", "high"), "normal": ("loc", "scale"),
               "lognormal": ("loc", "scale")}
"""Prior kinds and the keys each needs."""


class LogUniform(torch.distributions.TransformedDistribution):
    """``log theta ~ U(log low, log high)`` (density ``1 / (theta log(high / low))``), support
    ``[low, high]``.

    Arguments:
        low, high: bounds, ``0 < low < high`` (tensors of the same shape, the batch shape).

    Raises:
        ValueError: bounds not positive or not increasing.
    """

    arg_constraints = {"low": constraints.positive, "high": constraints.positive}

    def __init__(self, low: Tensor | float, high: Tensor | float, validate_args: bool | None = None):
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if not bool(((low > 0) & (high > low)).all()):
            raise ValueError(f"LogUniform needs 0 < low < high, got low={low.tolist()}, high={high.tolist()}")
        self.low, self.high = low, high
        super().__init__(Uniform(low.log(), high.log(), validate_args=validate_args), ExpTransform(),
                         validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    @property
    def mean(self) -> Tensor:
        """``(high - low) / log(high / low)``."""
        return (self.high - self.low) / (self.high / self.low).log()


def _bound(constraint: Any, name: str, default: float) -> float:
    return float(getattr(constraint, name, default))


class ProductPrior(Distribution):
    """Independent one-dimensional priors, one per parameter: ``p(theta) = prod_i p_i(theta_i)``.

    Arguments:
        marginals: ``D`` univariate distributions (batch and event shape ``()``), e.g.
            :class:`~torch.distributions.Uniform`, :class:`~torch.distributions.Normal`,
            :class:`~torch.distributions.LogNormal`, :class:`LogUniform`.

    Attributes:
        low, high: ``(D,)`` bounds of the support (``-inf``/``inf`` where unbounded).

    Raises:
        ValueError: no marginal, or one that is not univariate.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, marginals: Sequence[Distribution]):
        marginals = list(marginals)
        if not marginals:
            raise ValueError("ProductPrior needs at least one marginal")
        for i, m in enumerate(marginals):
            if tuple(m.batch_shape) or tuple(m.event_shape):
                raise ValueError(f"marginal {i} must be univariate (batch and event shape ()), got batch shape "
                                 f"{tuple(m.batch_shape)} and event shape {tuple(m.event_shape)}")
        self.marginals = marginals
        self.low = torch.tensor([_bound(m.support, "lower_bound", -math.inf) for m in marginals])
        self.high = torch.tensor([_bound(m.support, "upper_bound", math.inf) for m in marginals])
        finite_low, finite_high = torch.isfinite(self.low), torch.isfinite(self.high)
        self._inner = torch.where(finite_low & finite_high, (self.low + self.high) / 2,
                                  torch.where(finite_low, self.low + 1, torch.where(finite_high, self.high - 1, 0.0)))
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([len(marginals)]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        """``theta_i`` in ``[low_i, high_i]`` for every ``i`` (``check`` gives ``(*)`` booleans)."""
        return constraints.independent(constraints.interval(self.low, self.high), 1)

    @property
    def mean(self) -> Tensor:
        return torch.stack([m.mean for m in self.marginals])

    def sample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        """Samples ``(*sample_shape, D)``."""
        with torch.no_grad():
            return torch.stack([m.sample(torch.Size(sample_shape)) for m in self.marginals], dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(theta)`` for ``theta (*, D)``: ``(*)``, ``-inf`` outside the support."""
        value = torch.as_tensor(value, dtype=torch.float32)
        if value.shape[-1:] != self.event_shape:
            raise ValueError(f"theta must have shape (*, {self.event_shape[0]}), got {tuple(value.shape)}")
        inside = self.support.check(value)
        elementwise = (value >= self.low) & (value <= self.high)
        safe = torch.where(elementwise, value, self._inner)  # keeps the marginals' log_prob finite
        total = sum(m.log_prob(safe[..., i]) for i, m in enumerate(self.marginals))
        total = torch.nan_to_num(total, nan=-math.inf)  # e.g. a log-normal at exactly 0
        return torch.where(inside, total, torch.full_like(total, -math.inf))


def _numbers(table: Mapping[str, Any], key: str, where: str, dim: int | None) -> Tensor:
    value = table.get(key)
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise ValueError(f"{where} {key}: expected an array of finite numbers, got {value!r}")
    if dim is not None and len(value) != dim:
        raise ValueError(f"{where} {key}: expected {dim} numbers (one per parameter), got {len(value)}")
    return torch.tensor([float(v) for v in value])


def _marginal(kind: str, first: Tensor, second: Tensor, where: str, keys: tuple[str, str]) -> list[Distribution]:
    """Univariate distributions of one kind, one per entry of ``first``/``second``."""
    if kind in ("uniform", "loguniform"):
        if kind == "loguniform" and not bool((first > 0).all()):
            raise ValueError(f"{where} {keys[0]}: loguniform needs low > 0, got {first.tolist()}")
        if not bool((second > first).all()):
            raise ValueError(f"{where} {keys[1]}: must be > {keys[0]} in every dimension, got {keys[0]} "
                             f"{first.tolist()} and {keys[1]} {second.tolist()}")
        make = Uniform if kind == "uniform" else LogUniform
    else:
        if not bool((second > 0).all()):
            raise ValueError(f"{where} {keys[1]}: must be > 0, got {second.tolist()}")
        make = Normal if kind == "normal" else LogNormal
    return [make(a, b, validate_args=False) for a, b in zip(first, second)]


def _kind(table: Mapping[str, Any], where: str) -> str:
    kind = table.get("kind")
    if kind not in PRIOR_KINDS:
        raise ValueError(f"{where} kind: expected one of {', '.join(repr(k) for k in PRIOR_KINDS)}, got {kind!r}")
    return kind


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _joint(table: Mapping[str, Any], where: str) -> Distribution:
    kind = _kind(table, where)
    first_key, second_key = PRIOR_KINDS[kind]
    if kind == "normal" and "covariance" in table:
        _check_keys(table, {"kind", "loc", "covariance", "names"}, where)
        loc = _numbers(table, "loc", where, None)
        rows = table["covariance"]
        if not (isinstance(rows, (list, tuple)) and len(rows) == len(loc)):
            raise ValueError(f"{where} covariance: expected {len(loc)} rows of {len(loc)} numbers, got {rows!r}")
        cov = torch.stack([_numbers({"covariance": r}, "covariance", where, len(loc)) for r in rows])
        if not torch.allclose(cov, cov.T) or torch.linalg.cholesky_ex(cov).info != 0:
            raise ValueError(f"{where} covariance: must be symmetric positive definite, got {cov.tolist()}")
        return MultivariateNormal(loc, covariance_matrix=cov)
    _check_keys(table, {"kind", first_key, second_key, "names"}, where)
    first = _numbers(table, first_key, where, None)
    second = _numbers(table, second_key, where, len(first))
    return ProductPrior(_marginal(kind, first, second, where, (first_key, second_key)))


def _per_parameter(parameters: Any, where: str) -> Distribution:
    if not isinstance(parameters, (list, tuple)) or not parameters:
        raise ValueError(f"{where} parameters: expected an array of tables ([[prior.parameters]]), got {parameters!r}")
    marginals = []
    for i, p in enumerate(parameters):
        at = f"{where} parameters[{i}]"
        if not isinstance(p, Mapping):
            raise ValueError(f"{at}: expected a table, got {p!r}")
        kind = _kind(p, at)
        keys = PRIOR_KINDS[kind]
        _check_keys(p, {"kind", "name", *keys}, at)
        if "name" in p and not isinstance(p["name"], str):
            raise ValueError(f"{at} name: expected a string, got {p['name']!r}")
        first, second = (_numbers({k: [p.get(k)]}, k, at, 1) for k in keys)
        marginals += _marginal(kind, first, second, at, keys)
    return ProductPrior(marginals)


def prior_from_table(table: Mapping[str, Any], *, where: str = "[prior]") -> Distribution:
    """The prior described by a ``[prior]`` table (see the module documentation for the schema).

    Arguments:
        table: the parsed table (as read from TOML, or as stored in a checkpoint's configuration).
        where: how errors name the table, e.g. ``"pipelines/my.toml [prior]"``.

    Returns:
        A :class:`ProductPrior` (independent parameters) or a
        :class:`~torch.distributions.MultivariateNormal` (``normal`` with ``covariance``); event
        shape ``(D,)``.

    Raises:
        ValueError: a missing, unknown or malformed key, arrays of different lengths, bounds out
            of order, a non-positive scale or a covariance that is not positive definite (the
            message names the key).
    """
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table, got {table!r}")
    if "parameters" in table:
        _check_keys(table, {"parameters"}, where + " (with parameters, every setting goes in [[prior.parameters]])")
        return _per_parameter(table["parameters"], where)
    if "kind" not in table:
        raise ValueError(f"{where}: set kind (one kind for every parameter) or [[prior.parameters]] tables "
                         "(one per parameter)")
    prior = _joint(table, where)
    names = table.get("names")
    if names is not None and (not isinstance(names, (list, tuple)) or len(names) != prior.event_shape[0]
                              or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{where} names: expected {prior.event_shape[0]} strings, got {names!r}")
    return prior


def prior_names(table: Mapping[str, Any]) -> list[str]:
    """Labels of the parameters of a valid ``[prior]`` table: its ``names`` / ``name`` entries,
    else ``theta_1 ... theta_D``."""
    if "parameters" in table:
        return [p.get("name", f"theta_{i + 1}") for i, p in enumerate(table["parameters"])]
    dim = int(prior_from_table(table).event_shape[0])
    return list(table.get("names") or [f"theta_{i + 1}" for i in range(dim)])
