"""The types of a message method's keyword arguments, checked on arrival.

A message's keyword arguments come from another cell as JSON; a method
whose argument is annotated ``str`` or ``dict[str, Any] | None`` must not
be handed a list, or it fails deep inside with a TypeError that says nothing
to the caller. :func:`argument_checks` reads a method's annotations once
and gives a check per argument; :func:`check_arguments` raises
:class:`~cellsd.errors.InvalidArguments` naming the argument, the type it
must have and the type it got.

Only what JSON can carry is checked, and only as far as the annotation says:
``str``, ``int`` (not a bool), ``float`` (an int will do), ``bool``,
``None``, ``dict``/``Mapping`` and ``list``/``Sequence``/``Iterable`` with
their item types, and unions of these. Anything else (``Any``, a versioned
object class, which local callers may also pass in its dict form) is not
checked: the method checks it itself. Local callers may pass tuples and
sets where a list is expected, and any Mapping where a dict is.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from cellsd.errors import InvalidArguments

#: A check: None when the value fits, else where inside it (``""`` for the
#: value itself, ``"['key']"``, ``"[0]"``), what it should be there, and
#: what is there instead.
Problem = tuple[str, str, Any]
Check = Callable[[Any], Problem | None]

_SEQUENCES = (list, tuple, set, frozenset)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_ITERABLES = (list, abc.Sequence, abc.Iterable, abc.Collection)


def _simple(fits: Callable[[Any], bool], label: str) -> tuple[Check, str]:
    def check(value: Any) -> Problem | None:
        return None if fits(value) else ("", label, value)

    return check, label


def _type_check(hint: Any) -> tuple[Check | None, str]:
    """The check for ``hint`` and how its type reads; (None, ...) when any
    value is accepted."""
    if hint is None or hint is type(None):
        return _simple(lambda v: v is None, "null")
    if hint is bool:
        return _simple(lambda v: isinstance(v, bool), "a boolean")
    if hint is int:
        return _simple(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
    if hint is float:
        return _simple(lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number")
    if hint is str:
        return _simple(lambda v: isinstance(v, str), "a string")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_check(arg) for arg in args]
        if any(check is None for check, _ in parts):
            return None, "anything"
        label = " or ".join(label for _, label in parts)
        checks = [check for check, _ in parts if check is not None]

        def union(value: Any) -> Problem | None:
            if any(c(value) is None for c in checks):
                return None
            # One alternative of the same shape says better what is wrong.
            near = [p for c in checks if (p := c(value)) is not None and p[0]]
            return near[0] if len(near) == 1 else ("", label, value)

        return union, label
    if hint in _MAPPINGS or origin in _MAPPINGS:
        value_check = _type_check(args[1])[0] if len(args) == 2 else None

        def mapping(value: Any) -> Problem | None:
            if not isinstance(value, Mapping):
                return ("", "an object", value)
            if value_check is not None:
                for key, item in value.items():
                    problem = value_check(item)
                    if problem is not None:
                        return (f"[{key!r}]{problem[0]}", problem[1], problem[2])
            return None

        return mapping, "an object"
    if hint in _ITERABLES or origin in _ITERABLES:
        item_check = _type_check(args[0])[0] if args else None

        def sequence(value: Any) -> Problem | None:
            if not isinstance(value, _SEQUENCES):
                return ("", "a list", value)
            if item_check is not None:
                for index, item in enumerate(value):
                    problem = item_check(item)
                    if problem is not None:
                        return (f"[{index}]{problem[0]}", problem[1], problem[2])
            return None

        return sequence, "a list"
    # Any, object, a versioned object class, anything else: not checked.
    return None, "anything"


def argument_checks(fn: Callable[..., Any]) -> dict[str, Check]:
    """The checks of ``fn``'s annotated keyword arguments (its first
    parameter, the message, excluded); empty when its annotations cannot be
    resolved."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return {}
    checks: dict[str, Check] = {}
    for name, hint in hints.items():
        if name in ("return", "message"):
            continue
        check, _ = _type_check(hint)
        if check is not None:
            checks[name] = check
    return checks


def check_arguments(
    method_name: str, checks: Mapping[str, Check], kwargs: Mapping[str, Any]
) -> None:
    """InvalidArguments for the first argument in ``kwargs`` of the wrong
    type."""
    for name, check in checks.items():
        if name in kwargs:
            problem = check(kwargs[name])
            if problem is not None:
                where, expected, found = problem
                raise InvalidArguments(
                    method_name=method_name,
                    reason=f"{name}{where} must be {expected}, not {_json_type(found)}",
                )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, _SEQUENCES):
        return "a list"
    return type(value).__name__


# --------------------------------------------------------------------------
# For methods whose arguments are looser than one annotation


def integer(method_name: str, name: str, value: Any) -> int:
    """An id given as an integer or as a string of digits (both are sent)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise InvalidArguments(
        method_name=method_name, reason=f"{name} must be an integer, not {_json_type(value)}"
    )


def mapping(
    method_name: str, name: str, value: Any, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``value`` as a new dict (None: empty), holding every ``required`` key;
    else InvalidArguments naming what is wrong."""
    if value is None:
        value = {}
    elif hasattr(value, "to_dict") and not isinstance(value, Mapping):
        value = value.to_dict()  # a versioned object given whole
    if not isinstance(value, Mapping):
        raise InvalidArguments(
            method_name=method_name, reason=f"{name} must be an object, not {_json_type(value)}"
        )
    missing = [key for key in required if key not in value]
    if missing:
        raise InvalidArguments(
            method_name=method_name, reason=f"{name} has no {', '.join(map(repr, missing))}"
        )
    return dict(value)


def filter_values(method_name: str, filters: Any) -> dict[str, Any]:
    """Query filters (None: none) as a new dict: each value a single value
    or a list of them, never an object or a nested list."""
    found = mapping(method_name, "filters", filters)
    for key, value in found.items():
        items = value if isinstance(value, _SEQUENCES) else [value]
        for item in items:
            if isinstance(item, Mapping | list | tuple | set | frozenset):
                raise InvalidArguments(
                    method_name=method_name,
                    reason=f"filter {key!r} must be a value or a list of values, "
                    f"not {_json_type(value)}",
                )
    return found


class ArgumentShape:
    """Which keyword arguments a message method takes, for a check that is
    cheaper than ``Signature.bind`` on every message (bind names the
    problem when this check fails)."""

    def __init__(self, signature: inspect.Signature, checks: dict[str, Check]) -> None:
        self.signature = signature
        #: The type check of each annotated argument (cellsd.messaging.arguments).
        self.checks = checks
        params = list(signature.parameters.values())[1:]  # after the message
        kinds = inspect.Parameter
        self.any_keyword = any(p.kind is kinds.VAR_KEYWORD for p in params)
        named = [p for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
        self.allowed = frozenset(p.name for p in named)
        self.required = frozenset(p.name for p in named if p.default is p.empty)
        self.positional_only = any(p.kind is kinds.POSITIONAL_ONLY for p in params)

    def fits(self, kwargs: dict[str, Any]) -> bool:
        if self.positional_only:
            return False
        keys = kwargs.keys()
        if not self.required <= keys:
            return False
        return self.any_keyword or keys <= self.allowed
