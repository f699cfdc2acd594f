"""Validation reports as JSON: one writer for every pipeline.

:func:`write_report` writes a nested mapping of results as strict JSON (RFC 8259), atomically
(temporary file, then rename, through :func:`surrogate.data.hdf5.atomic_output`): numpy scalars
and arrays, torch tensors, tuples and paths become plain JSON values, and NaN and +-inf, which
strict JSON cannot represent (Python's :mod:`json` would write the non-standard tokens ``NaN``
and ``Infinity``), become ``null``. :func:`to_json` is the conversion alone.

Example:
    >>> import json, tempfile
    >>> import numpy as np
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = write_report(f"{d}/report.json", {"auc": np.float32(0.5), "widths": np.array([1.0, np.nan])})
    ...     json.loads(path.read_text())
    {'auc': 0.5, 'widths': [1.0, None]}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from surrogate.data.hdf5 import atomic_output

__all__ = ["to_json", "write_report"]


def to_json(value: Any) -> Any:
    """``value`` as plain JSON-compatible Python: dicts with ``str`` keys, lists, str, int, float, bool, None.

    Conversions, applied recursively: mappings become dicts (keys with :func:`str`, so numpy
    integer or Path keys work too), lists, tuples, sets and numpy arrays become lists, numpy and
    torch scalars become Python numbers or bools, paths become strings, and every non-finite
    float (NaN, +inf, -inf) becomes ``None``.

    Arguments:
        value: The object to convert.

    Returns:
        The converted object (new containers; ``value`` is not modified).

    Raises:
        TypeError: For an object of any other type (named with its path in ``value``).
    """
    return _convert(value, "report")


def _convert(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _convert(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _convert(value.tolist(), where)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_convert(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if type(value).__module__ == "torch" and hasattr(value, "tolist"):  # torch.Tensor without importing torch
        return _convert(value.detach().cpu().tolist(), where)
    raise TypeError(f"{where}: cannot write a {type(value).__name__} to a JSON report ({value!r})")


def write_report(path: str | os.PathLike, report: Mapping[str, Any]) -> Path:
    """Writes ``report`` as strict JSON to ``path``, atomically.

    The file is UTF-8 JSON with an indent of 2 and a trailing newline; values are converted by
    :func:`to_json` (numpy values to Python, paths to strings, NaN and +-inf to ``null``), so any
    strict JSON parser reads it. It appears under ``path`` only when complete; an existing file
    is replaced.

    Arguments:
        path: Destination file; its directory must exist.
        report: The results, a mapping with string keys (nested mappings and sequences allowed).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        TypeError: If ``report`` is not a mapping or holds a value :func:`to_json` cannot convert;
            nothing is written then.
        FileNotFoundError: If the directory of ``path`` does not exist.
    """
    if not isinstance(report, Mapping):
        raise TypeError(f"report must be a mapping (dict) of results, got {type(report).__name__}")
    text = json.dumps(to_json(report), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
