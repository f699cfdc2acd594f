"""Typed tables: the machinery that turns TOML tables into frozen dataclasses and checked
constructor keyword arguments, with errors that name the file, the key, what was expected and
the value found. :mod:`surrogate.config` builds every pipeline file with it.

Field conventions (see :func:`setting`): ``int``, ``float`` (an integer is accepted), ``bool``,
``str``, ``Path`` (relative paths resolved against a base folder), ``X | None``,
``Literal[...]`` (a choice), ``tuple[X, ...]`` and ``tuple[X, Y]`` (from TOML arrays), nested
dataclasses (sub-tables), and ``Mapping[str, Any]`` tables holding a constructor's keyword
arguments (``setting(kwargs_of="module:Name")``: names and annotated types checked against its
signature).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

__all__ = ["ConfigDeprecationWarning", "ConfigError", "Mismatch", "build_section", "check_kwargs", "coerce",
           "constructor_table", "import_object", "plain", "setting", "type_name"]


class ConfigError(ValueError):
    """A configuration file or table is wrong; the message names the file, key and value."""


class ConfigDeprecationWarning(FutureWarning):
    """A renamed key or section was used; the message names its new name (shown by default)."""


def setting(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, kwargs_of: str | None = None, exclude: tuple[str, ...] = (),
            defaults: Mapping[str, Any] | None = None, default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with a range check (``ge``/``gt``/``le``, skipped for ``None``) or,
    for a ``Mapping`` table, the constructor whose keyword arguments the table holds
    (``kwargs_of="module:Name"``, imported when the file is read; ``exclude``: arguments that
    the pipeline fills in itself and a file may not set; ``defaults``: arguments for the keys a
    file leaves out, before the constructor's own defaults, also the field's default)."""
    metadata = {"ge": ge, "gt": gt, "le": le, "kwargs_of": kwargs_of, "exclude": exclude, "defaults": defaults}
    if defaults is not None and default_factory is None:
        default_factory = lambda: dict(defaults)  # noqa: E731 - a fresh copy per instance
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------
# Typed building of dataclasses from TOML tables


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "nothing"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"an array of {type_name(args[0])}"
        return f"an array of {len(args)} values ({', '.join(type_name(a) for a in args)})"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin is not None and issubclass(origin, Mapping):
        return "a table"
    return {Path: "a path string", int: "an integer", float: "a number", str: "a string",
            bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


class Mismatch(Exception):
    """A value does not have the expected type (raised by :func:`coerce`)."""


def coerce(value: Any, tp: Any, where: str, base: Path | None) -> Any:
    """``value`` converted to the type ``tp``.

    Raises:
        Mismatch: the value does not have that type (the caller names it).
        ConfigError: a nested table is wrong.
        TypeError: ``tp`` is not a supported annotation.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise Mismatch
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return coerce(value, arg, where, base)
            except Mismatch:
                continue
        raise Mismatch
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise Mismatch
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise Mismatch
        p = Path(value).expanduser()
        return p if (p.is_absolute() or base is None) else base / p
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], where, base) for v in value)
        if len(value) != len(args):
            raise Mismatch
        return tuple(coerce(v, a, where, base) for v, a in zip(value, args))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise Mismatch
        return build_section(tp, value, where, base)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise Mismatch
        return dict(value)
    raise TypeError(f"configuration field type {tp!r} is not supported")  # a bug in a schema


def plain(value: Any) -> Any:
    """Plain TOML/JSON-like data: paths become strings, tuples lists, dataclasses dicts (a field
    whose metadata has ``omit_if_none`` is left out while it is ``None``, so that adding such an
    optional key does not change what older files store)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_if_none") and getattr(value, f.name) is None)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for key, ok, text in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                          ("le", lambda a, b: a <= b, "<=")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{where}: must be {text} {bound}, got {value!r}")


def build_section(cls: type, table: Mapping[str, Any], where: str, base: Path | None = None) -> Any:
    """Builds the frozen dataclass ``cls`` from a TOML table, checking every key.

    Arguments:
        cls: the dataclass (fields typed as described in the module documentation).
        table: the parsed TOML table.
        where: how errors name the table, e.g. ``"pipelines/calo_gan.toml [train]"``.
        base: folder against which relative ``Path`` values are resolved (``None``: keep them
            relative to the current working directory).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: an unknown or missing key, a value of the wrong type or out of range,
            or a consistency check of ``cls.__post_init__`` that failed (its message prefixed
            with ``where``).
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in table.items():
        key_where = f"{where} {name}"
        try:
            value = coerce(value, hints[name], key_where, base)
        except Mismatch:
            raise ConfigError(f"{key_where}: expected {type_name(hints[name])}, got {value!r}") from None
        meta = fields[name].metadata
        _check_range(value, meta, key_where)
        if meta.get("kwargs_of"):
            value = constructor_table(value, meta, key_where)
        kwargs[name] = value
    missing = sorted(n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def constructor_table(table: Mapping[str, Any], meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A table of constructor keyword arguments declared with ``setting(kwargs_of=...)``: merged
    over the field's ``defaults`` and checked with :func:`check_kwargs`.

    Raises:
        ConfigError: see :func:`check_kwargs`.
    """
    merged = {**(meta.get("defaults") or {}), **table}
    return check_kwargs(import_object(meta["kwargs_of"]), merged, where, exclude=meta.get("exclude", ()))


def import_object(spec: str) -> Callable:
    """The object named by ``"module:name"``."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Checks that ``kwargs`` are keyword arguments of ``fn`` (a class or function) with values
    of their annotated types (TOML arrays become tuples where a tuple is annotated).

    Arguments:
        fn: the constructor or function.
        kwargs: the table of keyword arguments.
        where: how errors name the table.
        exclude: arguments the caller fills in itself (refused here).

    Returns:
        The checked (and converted) keyword arguments.

    Raises:
        ConfigError: an unknown name (listing the accepted ones) or a value of the wrong type.
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
             and n != "self" and n not in exclude]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown argument(s) {unknown} for {fn.__name__}; accepted: {names}")
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    out = {}
    for name, value in kwargs.items():
        tp = hints.get(name, Any)
        try:
            out[name] = coerce(value, _toml_view(tp), f"{where} {name}", None)
        except Mismatch:
            raise ConfigError(f"{where} {name}: expected {type_name(tp)}, got {value!r}") from None
        except TypeError:  # an annotation the builder does not model (a tensor, a module ...)
            out[name] = value
    return out


def _toml_view(tp: Any) -> Any:
    """Annotations of constructors as TOML can give them: sequences become tuples."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_toml_view(a) for a in args)]
    if origin in (list, typing.Sequence, collections.abc.Sequence) and args:
        return tuple[_toml_view(args[0]), ...]
    if origin is tuple and args:
        return tuple[tuple(_toml_view(a) for a in args)] if args[-1] is not Ellipsis else tuple[_toml_view(args[0]), ...]
    return tp
