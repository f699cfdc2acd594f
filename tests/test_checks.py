"""The shared argument checks: accepted values come back as Python numbers, messages name argument, range and value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from surrogate.checks import check_choice, check_float, check_int


def test_check_int_accepts_python_and_numpy_integers():
    assert check_int("n", 3) == 3
    value = check_int("n", np.int64(7), minimum=1, maximum=7)
    assert value == 7 and type(value) is int
    assert check_int("n", None, optional=True) is None


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0, dict(minimum=1), "n must be an integer >= 1, got 0"),
        (True, {}, "n must be an integer, got True"),
        (2.0, dict(minimum=1), "n must be an integer >= 1, got 2.0"),
        ("3", {}, "n must be an integer, got '3'"),
        (11, dict(minimum=1, maximum=10), r"n must be an integer in \[1, 10\], got 11"),
        (5, dict(maximum=4), "n must be an integer <= 4, got 5"),
        (None, dict(minimum=0), "n must be an integer >= 0, got None"),
        (-1, dict(minimum=0, optional=True), "n must be an integer >= 0 or None, got -1"),
        (0, dict(minimum=1, where="showers.h5"), "^showers.h5: n must be an integer >= 1, got 0$"),
    ],
)
def test_check_int_messages(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_int("n", value, **kwargs)


def test_check_float_accepts_real_numbers():
    assert check_float("x", 1) == 1.0 and type(check_float("x", 1)) is float
    assert check_float("x", np.float32(0.5), minimum=0, maximum=1) == 0.5
    assert check_float("x", 0.0, minimum=0) == 0.0
    assert check_float("x", None, optional=True) is None


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0.0, dict(minimum=0, exclusive_minimum=True, unit="mm"), "x must be a finite number > 0 mm, got 0.0"),
        (1.0, dict(minimum=0, maximum=1, exclusive_maximum=True), r"x must be a finite number in \[0, 1\), got 1.0"),
        (10, dict(minimum=0, maximum=10, exclusive_minimum=True, exclusive_maximum=True),
         r"x must be a finite number in \(0, 10\), got 10"),
        (math.nan, {}, "x must be a finite number, got nan"),
        (math.inf, dict(minimum=0), "x must be a finite number >= 0, got inf"),
        (True, {}, "x must be a finite number, got True"),
        ("1.5", {}, "x must be a finite number, got '1.5'"),
        (2.5, dict(maximum=1.1), "x must be a finite number <= 1.1, got 2.5"),
        (-1.0, dict(minimum=0, optional=True, where="Calo"), "^Calo: x must be a finite number >= 0 or None, got -1.0$"),
    ],
)
def test_check_float_messages(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_float("x", value, **kwargs)


def test_check_choice():
    assert check_choice("compression", None, ("gzip", "lzf", None)) is None
    assert check_choice("kind", "maf", ["maf", "nsf"]) == "maf"
    with pytest.raises(ValueError, match=r"^f.h5: compression must be one of \('gzip', 'lzf', None\), got 'zip'$"):
        check_choice("compression", "zip", ("gzip", "lzf", None), where="f.h5")
    with pytest.raises(ValueError, match=r"kind must be one of \('a', 'b'\), got \[1\]"):
        check_choice("kind", [1], {"a": 1, "b": 2})
    with pytest.raises(ValueError, match="kind must be one of"):
        check_choice("kind", np.zeros(3), ("a", None))
