"""Argument checks shared by the whole package: integers, real numbers, choices, and the
warning for conditions outside a model's training range.

Each check raises :class:`ValueError` whose message names the argument, what was expected (type
and range) and the value found, e.g. ``"n_events must be an integer >= 1, got 0"``; ``where``
prefixes the message with its context, e.g. the file being written
(``"showers.h5: n_events must be ..."``). ``bool`` is never accepted as a number (``True`` is
an ``int`` to Python, but ``n_events=True`` is a mistake). Each check returns the value as a
plain Python ``int`` / ``float`` (numpy scalars included), so callers can store it.

Example:
    >>> check_int("batch_size", 64, minimum=1)
    64
    >>> check_float("pixel_scale", 0.2, minimum=0.0, exclusive_minimum=True, unit="arcsec/pixel")
    0.2
    >>> check_choice("compression", "lzf", ("gzip", "lzf", None))
    'lzf'
    >>> check_int("n_events", 0, minimum=1, where="showers.h5")
    Traceback (most recent call last):
    ...
    ValueError: showers.h5: n_events must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = ["ExtrapolationWarning", "check_choice", "check_float", "check_int", "warn_outside"]


class ExtrapolationWarning(UserWarning):
    """A model is asked about conditions outside its training range (an incident energy, a galaxy
    magnitude or size, data far from the training simulations): its answer is an extrapolation.
    ``surrogate --strict`` (or ``warnings.simplefilter("error", ExtrapolationWarning)``) makes it
    an error."""


def _prefix(where: Any) -> str:
    return "" if where is None else f"{where}: "


def _number(value: float) -> str:
    """``0`` for ``0.0``, ``2.5`` for ``2.5``: bounds as a reader writes them."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _bounds(minimum: float | None, maximum: float | None, exclusive_minimum: bool, exclusive_maximum: bool) -> str:
    """``" >= 1"``, ``" < 10"`` or ``" in [0, 1)"``: the allowed range in words."""
    if minimum is not None and maximum is not None:
        low, high = "(" if exclusive_minimum else "[", ")" if exclusive_maximum else "]"
        return f" in {low}{_number(minimum)}, {_number(maximum)}{high}"
    if minimum is not None:
        return f" {'>' if exclusive_minimum else '>='} {_number(minimum)}"
    if maximum is not None:
        return f" {'<' if exclusive_maximum else '<='} {_number(maximum)}"
    return ""


def _in_range(value: float, minimum: float | None, maximum: float | None, exclusive_minimum: bool,
              exclusive_maximum: bool) -> bool:
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        return False
    if maximum is not None and (value >= maximum if exclusive_maximum else value > maximum):
        return False
    return True


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
    where: Any = None,
) -> int | None:
    """Checks that ``value`` is an integer (Python or numpy, not ``bool``) in ``[minimum, maximum]``.

    Arguments:
        name: Argument name for the message.
        value: The value to check.
        minimum, maximum: Inclusive bounds; ``None`` for none.
        optional: Also accept ``None`` (returned as is).
        where: Context prefixed to the message (a file name, a class name), or ``None``.

    Returns:
        ``int(value)``, or ``None`` when ``optional`` and ``value is None``.

    Raises:
        ValueError: ``"{where}: {name} must be an integer >= {minimum}[ or None], got {value!r}"``
            for a non-integer (floats, strings and bools included) or a value out of range.
    """
    if optional and value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if not ok or not _in_range(value, minimum, maximum, False, False):
        none = " or None" if optional else ""
        raise ValueError(
            f"{_prefix(where)}{name} must be an integer{_bounds(minimum, maximum, False, False)}{none}, got {value!r}"
        )
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    unit: str = "",
    optional: bool = False,
    where: Any = None,
) -> float | None:
    """Checks that ``value`` is a finite real number (int or float, Python or numpy, not ``bool``) in range.

    Arguments:
        name: Argument name for the message.
        value: The value to check.
        minimum, maximum: Bounds; ``None`` for none.
        exclusive_minimum, exclusive_maximum: Exclude the bound itself (``> minimum``, ``< maximum``).
        unit: Unit named in the message after the range, e.g. ``"arcsec/pixel"``.
        optional: Also accept ``None`` (returned as is).
        where: Context prefixed to the message, or ``None``.

    Returns:
        ``float(value)``, or ``None`` when ``optional`` and ``value is None``.

    Raises:
        ValueError: ``"{where}: {name} must be a finite number > 0 {unit}[ or None], got {value!r}"``
            for a non-number, NaN or infinity, or a value out of range.
    """
    if optional and value is None:
        return None
    ok = (
        not isinstance(value, (bool, np.bool_))
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and _in_range(value, minimum, maximum, exclusive_minimum, exclusive_maximum)
    )
    if not ok:
        bounds = _bounds(minimum, maximum, exclusive_minimum, exclusive_maximum)
        unit_text = f" {unit}" if unit else ""
        none = " or None" if optional else ""
        raise ValueError(f"{_prefix(where)}{name} must be a finite number{bounds}{unit_text}{none}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any], *, where: Any = None) -> Any:
    """Checks that ``value`` is one of ``choices``.

    Arguments:
        name: Argument name for the message.
        value: The value to check.
        choices: The allowed values (``None`` may be one of them).
        where: Context prefixed to the message, or ``None``.

    Returns:
        ``value``.

    Raises:
        ValueError: ``"{where}: {name} must be one of {choices}, got {value!r}"``.
    """
    try:
        ok = value in choices
    except (TypeError, ValueError):  # unhashable value against a set; an array's ambiguous truth value
        ok = False
    if not ok:
        shown = tuple(choices) if not isinstance(choices, (list, tuple)) else choices
        raise ValueError(f"{_prefix(where)}{name} must be one of {shown}, got {value!r}")
    return value


def warn_outside(name: str, low: float, high: float, trained: tuple[float, float], *, unit: str = "",
                 source: str = "", where: Any = None, stacklevel: int = 2) -> bool:
    """Warns (:class:`ExtrapolationWarning`) when ``[low, high]`` is not inside the training range.

    Arguments:
        name: what the values are, e.g. ``"incident energy"``.
        low, high: the smallest and largest value asked for (equal for a single value).
        trained: the ``(min, max)`` of the training data.
        unit: the unit of all four numbers, for the message.
        source: where the training range was read, for the message.
        where: context prefixed to the message (a file, a run folder), or ``None``.
        stacklevel: as for :func:`warnings.warn`.

    Returns:
        True when a warning was issued.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_outside("incident energy", 0.5, 20.0, (1.0, 100.0), unit="GeV")
        True
        >>> str(caught[0].message)
        'incident energy of 0.5 to 20 GeV lies outside the training range 1 to 100 GeV: the model extrapolates'
    """
    import warnings

    t_low, t_high = float(trained[0]), float(trained[1])
    if t_low <= low and high <= t_high:
        return False
    unit_text = f" {unit}" if unit else ""
    asked = f"{low:g}" if low == high else f"{low:g} to {high:g}"
    src = f" ({source})" if source else ""
    warnings.warn(f"{_prefix(where)}{name} of {asked}{unit_text} lies outside the training range "
                  f"{t_low:g} to {t_high:g}{unit_text}{src}: the model extrapolates",
                  ExtrapolationWarning, stacklevel=stacklevel + 1)
    return True
