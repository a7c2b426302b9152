"""The registry of versioned objects and their primitive form.

An object crosses the wire as ``{"nova_object.name", "nova_object.namespace",
"nova_object.version", "nova_object.data", "nova_object.changes"}``, the form
Nova used. Classes register here by name; only registered names are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from cellsd.errors import MalformedMessage

NAME_KEY = "nova_object.name"
NAMESPACE = "nova"


@runtime_checkable
class Primitivable(Protocol):
    """Anything that knows its own primitive form."""

    def obj_to_primitive(self) -> dict[str, Any]: ...


_registry: dict[str, Callable[[Mapping[str, Any]], Any]] = {}


def register(name: str, from_primitive: Callable[[Mapping[str, Any]], Any]) -> None:
    """Make objects named ``name`` rebuildable from their primitive form."""
    _registry[name] = from_primitive


def obj_from_primitive(primitive: Mapping[str, Any]) -> Any:
    name = primitive.get(NAME_KEY)
    try:
        factory = _registry[str(name)]
    except KeyError:
        raise MalformedMessage(reason=f"unknown object type {name!r}") from None
    return factory(primitive)


def deserialize(value: Any) -> Any:
    """Rebuild every registered object found in a decoded JSON value."""
    if isinstance(value, dict):
        if NAME_KEY in value:
            return obj_from_primitive(value)
        return {k: deserialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deserialize(v) for v in value]
    return value


def to_primitive(value: Any) -> Any:
    """``default`` hook for the JSON encoder: objects, sets, tuples."""
    if isinstance(value, Primitivable):
        return value.obj_to_primitive()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} between cells")
