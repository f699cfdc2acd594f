"""ROOT TTree input via uproot: opening a tree, checking branches, chunked reads, flat branches.

:func:`read_root_flat` reads flat numeric branches (one number per entry) of a TTree into arrays.
The building blocks it is made of serve every ROOT reader of the package (the per-event hit
lists of :mod:`surrogate.data.root_hits` too): :func:`open_tree` opens a file's TTree with clear
errors, :func:`flat_branch_dtype` checks that a branch holds one number of the expected kind per
entry, :func:`iterate_chunks` reads branches chunk by chunk.

Choices (all readers):

* **Chunked reading.** Branches are read with uproot's chunked iteration (``TTree.iterate``, what
  ``uproot.iterate`` runs per file; ``step_size`` entries or a memory size such as ``"50 MB"`` per
  chunk), so the temporaries are bounded by one chunk.
* **Units** are those of the file; nothing is rescaled.
* **Errors** name the file, the tree, the branch and what was expected (not a ROOT file, no such
  TTree, a missing branch, a branch of the wrong type: jagged, fixed-size array, string, object).

uproot is an optional dependency (``pip install 'physics-surrogate[root]'``), imported only when a
ROOT file is read.

Example:
    >>> import tempfile, numpy as np, uproot
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with uproot.recreate(f"{d}/events.root") as f:
    ...         _ = f.mktree("events", {"M": "float64", "Q": "int32"})
    ...         f["events"].extend({"M": np.array([91.2, 90.8]), "Q": np.array([1, -1], np.int32)})
    ...     flat = read_root_flat(f"{d}/events.root", "events", {"mass": "M", "charge": "Q"})
    >>> flat["mass"].tolist(), flat["charge"].dtype
    ([91.2, 90.8], dtype('int32'))
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from surrogate.checks import check_int

__all__ = [
    "DEFAULT_STEP_SIZE",
    "check_step_size",
    "flat_branch_dtype",
    "iterate_chunks",
    "open_tree",
    "read_root_flat",
]

DEFAULT_STEP_SIZE = 100_000
"""Entries per chunk unless a reader is told otherwise."""


def _uproot():
    try:
        import uproot
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "reading ROOT files needs uproot: pip install 'physics-surrogate[root]' (uproot>=5, awkward>=2)"
        ) from error
    return uproot


@contextmanager
def open_tree(path: str | os.PathLike, tree_name: str) -> Iterator[Any]:
    """Context manager: the TTree ``tree_name`` of the ROOT file ``path``; closes the file on exit.

    Arguments:
        path: ROOT file.
        tree_name: Name of the TTree, e.g. ``"events"``.

    Yields:
        The ``uproot`` TTree.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a directory.
        ValueError: If uproot cannot open it as ROOT, or it has no TTree of that name (the message
            lists the TTrees of the file).
    """
    uproot = _uproot()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such ROOT file", str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "expected a ROOT file, found a directory", str(path))
    try:
        file = uproot.open(path)
    except (OSError, ValueError, uproot.deserialization.DeserializationError) as error:
        if isinstance(error, PermissionError):
            raise
        raise ValueError(f"{path}: uproot cannot open this file as ROOT ({str(error).splitlines()[0]})") from error
    with file:
        trees = file.keys(filter_classname="TTree", cycle=False)
        try:
            obj = file[tree_name]
        except KeyError:
            raise ValueError(
                f"{path}: no TTree '{tree_name}' in the file; expected a TTree of that name; "
                f"TTrees in the file: {', '.join(trees) or 'none'}"
            ) from None
        if getattr(obj, "classname", None) != "TTree":
            raise ValueError(
                f"{path}: '{tree_name}' is a {getattr(obj, 'classname', type(obj).__name__)}, expected a TTree; "
                f"TTrees in the file: {', '.join(trees) or 'none'}"
            )
        yield obj


def _describe(branch: Any) -> str:
    """What a branch holds, in words, for error messages."""
    uproot = _uproot()
    interpretation = branch.interpretation
    typename = branch.typename
    if isinstance(interpretation, uproot.interpretation.jagged.AsJagged):
        return f"a jagged branch ({typename}: a variable-length list per entry)"
    if isinstance(interpretation, uproot.interpretation.strings.AsStrings):
        return f"a string branch ({typename})"
    dtype = getattr(interpretation, "to_dtype", None)
    if isinstance(interpretation, uproot.interpretation.numerical.Numerical) and dtype is not None:
        if dtype.shape:
            return f"a fixed-size array branch ({typename}: {dtype.shape} values per entry)"
        return f"a {dtype.base.name} branch ({typename})"
    return f"a non-numeric branch ({typename}, read as {interpretation!r})"


def flat_branch_dtype(tree: Any, name: str, *, path: Any, role: str, kinds: str, expected: str) -> np.dtype:
    """Checks that ``tree`` has a flat branch ``name`` (one number per entry) of a dtype kind in ``kinds``.

    Arguments:
        tree: An uproot TTree.
        name: Branch name.
        path: File name for messages.
        role: What the branch is for, for messages (e.g. ``"energy"``, ``"field 'mass'"``).
        kinds: Accepted numpy dtype kinds, e.g. ``"iu"`` (integers) or ``"f"``.
        expected: What was expected, in words, for messages.

    Returns:
        The branch's dtype in native byte order.

    Raises:
        ValueError: If the branch is missing (the message lists the branches) or is not a flat
            branch of an accepted kind (jagged, fixed-size array, string, object, wrong kind).
    """
    uproot = _uproot()
    try:
        branch = tree[name]
    except KeyError:
        raise ValueError(
            f"{path}: tree '{tree.name}' has no branch '{name}' ({role}); expected {expected}; "
            f"branches: {', '.join(tree.keys()) or 'none'}"
        ) from None
    interpretation = branch.interpretation
    dtype = getattr(interpretation, "to_dtype", None)
    if (
        isinstance(interpretation, uproot.interpretation.numerical.Numerical)
        and isinstance(dtype, np.dtype)
        and not dtype.shape
        and dtype.kind in kinds
    ):
        return dtype.newbyteorder("=")
    raise ValueError(f"{path}: tree '{tree.name}': branch '{name}' ({role}) is {_describe(branch)}; expected {expected}")


def check_step_size(step_size: int | str) -> None:
    """Checks a reader's ``step_size``: entries per chunk (an integer >= 1) or a memory size such as ``"50 MB"``.

    Raises:
        ValueError: For anything else; uproot itself rejects a malformed memory size when reading.
    """
    if isinstance(step_size, str):
        return  # a memory size such as "50 MB": uproot parses (and rejects) it
    try:
        check_int("step_size", step_size, minimum=1)
    except ValueError:
        raise ValueError(
            f"step_size must be an integer number of entries >= 1 or a size such as '50 MB', got {step_size!r}"
        ) from None


def iterate_chunks(
    tree: Any, names: Sequence[str], step_size: int | str, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Reads branches chunk by chunk.

    Arguments:
        tree: An uproot TTree.
        names: Branches to read (checked by the caller).
        step_size: Entries per chunk, or a memory size such as ``"50 MB"``.
        start, stop: Entry range (``stop=None``: to the end).

    Yields:
        ``(first_entry, {name: (n,) array})`` per chunk, in entry order.
    """
    offset = start
    for arrays in tree.iterate(
        list(names), entry_start=start, entry_stop=stop, step_size=step_size, library="np"
    ):
        n = len(arrays[names[0]])
        yield offset, arrays
        offset += n


def read_root_flat(
    path: str | os.PathLike,
    tree: str,
    branches: Sequence[str] | Mapping[str, str],
    *,
    step_size: int | str = DEFAULT_STEP_SIZE,
) -> dict[str, np.ndarray]:
    """Reads flat numeric branches (one number per entry) of a TTree into arrays, chunk by chunk.

    Arguments:
        path: ROOT file.
        tree: TTree name, e.g. ``"events"``.
        branches: Branch names (the fields are named like the branches) or a mapping
            ``{field: branch}`` to rename them.
        step_size: Entries per chunk, or a memory size such as ``"50 MB"``.

    Returns:
        ``{field: (N,) array}``, ``N`` the entries of the tree, each in the branch's own dtype
        (native byte order): int32 stays int32, double stays float64. Units are those of the file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not a ROOT file, has no such TTree, a branch is missing or is not a
            flat numeric branch (jagged, fixed-size array, string, object), or ``branches`` is
            empty, a single string, or lists a branch twice. The message names the file, tree,
            branch and what was expected.

    Example:
        ``read_root_flat("uproot-Zmumu.root", "events", {"mass": "M", "e1": "E1"})`` gives
        ``{"mass": (2304,), "e1": (2304,)}`` float64 arrays (GeV).
    """
    if isinstance(branches, str) or not isinstance(branches, (Sequence, Mapping)):
        raise ValueError(f"{path}: branches must be a list of branch names or a {{field: branch}} mapping, got {branches!r}")
    if isinstance(branches, Mapping):
        fields = {str(k): v for k, v in branches.items()}
    else:
        names = list(branches)
        duplicated = sorted({b for b in names if names.count(b) > 1})
        if duplicated:
            raise ValueError(f"{path}: branches {duplicated} are listed more than once")
        fields = {b: b for b in names}
    if not fields:
        raise ValueError(f"{path}: no branches to read; expected at least one branch name")
    for field, branch in fields.items():
        if not isinstance(branch, str) or not branch:
            raise ValueError(f"{path}: field '{field}' must map to a branch name, got {branch!r}")
    check_step_size(step_size)
    with open_tree(path, tree) as ttree:
        dtypes = {
            b: flat_branch_dtype(ttree, b, path=path, role=f"field '{f}'", kinds="biuf",
                           expected="a flat numeric branch (one number per entry)")
            for f, b in fields.items()
        }
        n = int(ttree.num_entries)
        wanted = list(dict.fromkeys(fields.values()))
        out = {b: np.empty(n, dtype=dtypes[b]) for b in wanted}
        for offset, arrays in iterate_chunks(ttree, wanted, step_size):
            for b in wanted:
                values = arrays[b]
                out[b][offset:offset + len(values)] = values
    result, used = {}, set()
    for f, b in fields.items():  # a branch read for two fields gives each its own array
        result[f] = out[b].copy() if b in used else out[b]
        used.add(b)
    return result
