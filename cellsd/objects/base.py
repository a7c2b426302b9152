"""The registry of versioned objects and their primitive form.

An object crosses the wire as ``{"nova_object.name", "nova_object.namespace",
"nova_object.version", "nova_object.data", "nova_object.changes"}``, the form
Nova used. Classes register here by name; only registered names are rebuilt.
"""

# field() returns an attrs field specifier, not a shared mutable default.
# ruff: noqa: RUF009

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

import attrs
import orjson

from cellsd.errors import IncompatibleObjectVersion, MalformedMessage

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


# --------------------------------------------------------------------------
# The shared base of every versioned object.
#
# A subclass is an ``attrs.define`` class whose fields are declared once with
# :func:`field`. A field is either *set* (given to the constructor, assigned,
# or present in the primitive/dict it was built from) or *unset* (reads as its
# default, and is left out of the primitive form). Assigning a field marks it
# changed; dict/list fields changed in place and nested objects with changes
# of their own count as changed too.

PLAIN = "plain"
BOOL = "bool"
DATETIME = "datetime"
DICT = "dict"
LIST = "list"
OBJECT = "object"
JSON_TEXT = "json"
NETWORK_INFO = "network_info"

VERSION_KEY = "nova_object.version"
DATA_KEY = "nova_object.data"
CHANGES_KEY = "nova_object.changes"
NAMESPACE_KEY = "nova_object.namespace"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: The constructor default of every field: "not given". Typed Any so that a
#: field can be declared ``host: str | None = field()``.
UNSET: Any = _Unset()


def field(
    *,
    kind: str = PLAIN,
    default: Any = None,
    factory: Callable[[], Any] | None = None,
    obj_class: str | None = None,
) -> Any:
    """Declare an object field.

    ``kind`` says how the value is coerced and how it travels: ``datetime``
    (tz-aware in Python, ISO-8601 on the wire), ``bool``, ``dict``/``list``
    (copied, changes in place are noticed), ``object`` (a nested object of the
    registered class named ``obj_class``), ``json`` (any JSON value; a string
    is decoded), or ``plain``.
    """
    return attrs.field(
        default=UNSET,
        metadata={
            "kind": kind,
            "default": default,
            "factory": factory,
            "obj_class": obj_class,
        },
    )


def parse_datetime(value: Any) -> datetime.datetime | None:
    """A tz-aware UTC datetime from a datetime or an ISO-8601 string."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise MalformedMessage(reason=f"bad datetime {value!r}") from None
    else:
        raise MalformedMessage(reason=f"bad datetime {value!r}")
    if dt.tzinfo is None:
        return dt.replace(tzinfo=datetime.UTC)
    return dt.astimezone(datetime.UTC)


def _coerce(attr: attrs.Attribute[Any], value: Any) -> Any:
    kind = attr.metadata.get("kind", PLAIN)
    if value is None:
        # A NULL dict/list column or a JSON null reads as an empty one.
        return {} if kind == DICT else [] if kind == LIST else None
    if kind == DATETIME:
        return parse_datetime(value)
    if kind == BOOL:
        return bool(value)
    if kind == DICT:
        return dict(value)
    if kind == LIST:
        return list(value)
    if kind == JSON_TEXT and isinstance(value, str | bytes):
        return orjson.loads(value)
    if kind == NETWORK_INFO:
        return _network_info(value)
    if kind == OBJECT:
        return _coerce_object(str(attr.metadata["obj_class"]), value)
    return value


def _coerce_object(obj_class: str, value: Any) -> Any:
    cls = _classes[obj_class]
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        if NAME_KEY in value:
            return cls.obj_from_primitive(value)
        return cls.from_dict(value)
    raise MalformedMessage(reason=f"{obj_class} expected, got {type(value).__name__}")


def _network_info(value: Any) -> Any:
    """network_info from itself, its JSON text, ``{"network_info": ...}`` or
    an InstanceInfoCache primitive."""
    if isinstance(value, Mapping):
        value = value.get(DATA_KEY, value)
        value = value.get("network_info") if isinstance(value, Mapping) else None
    if isinstance(value, str | bytes):
        value = orjson.loads(value) if value else None
    return value


def _wire(attr: attrs.Attribute[Any], value: Any, primitive: bool) -> Any:
    """The JSON-able form of one field value."""
    if value is None:
        return None
    kind = attr.metadata.get("kind", PLAIN)
    if kind == DATETIME:
        return value.isoformat()
    if kind == OBJECT:
        return value.obj_to_primitive() if primitive else value.to_dict()
    if kind in _MUTABLE:
        return copy.deepcopy(value)
    return value


_MUTABLE = (DICT, LIST, JSON_TEXT, NETWORK_INFO)
_classes: dict[str, type[CellsObject]] = {}


@attrs.define(slots=True)
class CellsObject:
    """Base of the versioned objects: primitive form and change tracking."""

    #: ``major.minor``. A primitive with another major version is refused; a
    #: newer minor is accepted and its unknown fields are ignored.
    VERSION: ClassVar[str] = "1.0"
    #: Other names a plain-dict form may use for a field.
    ALIASES: ClassVar[Mapping[str, str]] = {}

    _set: set[str] = attrs.field(init=False, factory=set, repr=False, eq=False)
    _changes: set[str] = attrs.field(init=False, factory=set, repr=False, eq=False)
    _orig: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        for attr in self._fields():
            value = getattr(self, attr.name)
            if value is UNSET:
                factory = attr.metadata.get("factory")
                default = factory() if factory else attr.metadata.get("default")
                object.__setattr__(self, attr.name, default)
        self._snapshot()

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or value is UNSET:
            object.__setattr__(self, name, value)
            return
        attr = getattr(attrs.fields(type(self)), name, None)
        if attr is None:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        object.__setattr__(self, name, _coerce(attr, value))
        self._set.add(name)
        self._changes.add(name)

    # -- fields ------------------------------------------------------------

    @classmethod
    def _fields(cls) -> tuple[attrs.Attribute[Any], ...]:
        return tuple(a for a in attrs.fields(cls) if not a.name.startswith("_"))

    @classmethod
    def obj_name(cls) -> str:
        return cls.__name__

    @classmethod
    def obj_field_names(cls) -> tuple[str, ...]:
        return tuple(a.name for a in cls._fields())

    def obj_attr_is_set(self, name: str) -> bool:
        return name in self._set

    def obj_set_fields(self) -> list[str]:
        """Names of the set fields (a dict changed in place counts), in
        declaration order."""
        names = self._set | self._changed_in_place()
        return [a.name for a in self._fields() if a.name in names]

    # -- change tracking ---------------------------------------------------

    def _snapshot(self) -> None:
        self._orig = {
            a.name: copy.deepcopy(getattr(self, a.name))
            for a in self._fields()
            if a.metadata.get("kind") in _MUTABLE
        }

    def _changed_in_place(self) -> set[str]:
        return {n for n, orig in self._orig.items() if getattr(self, n) != orig}

    def obj_what_changed(self) -> set[str]:
        """Fields assigned, changed in place, or nested objects with changes."""
        changed = self._changes | self._changed_in_place()
        for attr in self._fields():
            value = getattr(self, attr.name)
            if isinstance(value, CellsObject) and value.obj_what_changed():
                changed.add(attr.name)
        return changed

    def obj_reset_changes(
        self, fields: Iterable[str] | None = None, recursive: bool = False
    ) -> None:
        """Forget changes (of ``fields`` only, if given)."""
        names = set(self.obj_field_names() if fields is None else fields)
        if recursive:
            for name in names:
                value = getattr(self, name)
                if isinstance(value, CellsObject):
                    value.obj_reset_changes(recursive=True)
        self._changes -= names
        for name in names & self._orig.keys():
            self._orig[name] = copy.deepcopy(getattr(self, name))

    # -- primitive form ------------------------------------------------------

    def obj_to_primitive(self) -> dict[str, Any]:
        fields = attrs.fields_dict(type(self))
        data = {
            name: _wire(fields[name], getattr(self, name), True) for name in self.obj_set_fields()
        }
        return {
            NAME_KEY: self.obj_name(),
            NAMESPACE_KEY: NAMESPACE,
            VERSION_KEY: self.VERSION,
            DATA_KEY: data,
            CHANGES_KEY: sorted(self.obj_what_changed()),
        }

    @classmethod
    def obj_from_primitive(cls, primitive: Mapping[str, Any]) -> Self:
        name = primitive.get(NAME_KEY)
        if name != cls.obj_name():
            raise MalformedMessage(reason=f"{name!r} is not a {cls.obj_name()} primitive")
        version = str(primitive.get(VERSION_KEY, ""))
        if version.split(".")[0] != cls.VERSION.split(".")[0]:
            raise IncompatibleObjectVersion(
                objname=cls.obj_name(), objver=version, supported=cls.VERSION
            )
        data = primitive.get(DATA_KEY) or {}
        if not isinstance(data, Mapping):
            raise MalformedMessage(reason=f"{cls.obj_name()} data is not a mapping")
        obj = cls._build(data)
        changes = primitive.get(CHANGES_KEY) or []
        obj._changes = {c for c in changes if c in obj._set}
        return obj

    @classmethod
    def _build(cls, data: Mapping[str, Any]) -> Self:
        """An object with exactly the known keys of ``data`` set, unchanged."""
        known = set(cls.obj_field_names())
        obj = cls(**{k: v for k, v in data.items() if k in known})
        # Nested objects keep their own changes (from their primitive).
        obj.obj_reset_changes()
        return obj

    # -- plain dict form -----------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build from the plain dict form (a DB row or what older callers
        send). Unknown keys are ignored; the result has no changes."""
        data = {cls.ALIASES.get(k, k): v for k, v in values.items()}
        return cls._build(data)

    def to_dict(self, include_unset: bool = False) -> dict[str, Any]:
        """The plain, JSON-able dict form (set fields, or all of them)."""
        fields = attrs.fields_dict(type(self))
        names = self.obj_field_names() if include_unset else self.obj_set_fields()
        return {name: _wire(fields[name], getattr(self, name), False) for name in names}

    def obj_clone(self) -> Self:
        """A deep copy keeping set fields and changes."""
        return copy.deepcopy(self)


_O = TypeVar("_O", bound=CellsObject)


def register_object(cls: type[_O]) -> type[_O]:
    """Class decorator: make ``cls`` rebuildable from its primitive form."""
    _classes[cls.obj_name()] = cls
    register(cls.obj_name(), cls.obj_from_primitive)
    return cls


@attrs.define(slots=True)
class PersistentObject(CellsObject):
    """A stored row: the timestamps and soft-delete flag every table has."""

    created_at: datetime.datetime | None = field(kind=DATETIME)
    updated_at: datetime.datetime | None = field(kind=DATETIME)
    deleted_at: datetime.datetime | None = field(kind=DATETIME)
    deleted: bool = field(kind=BOOL, default=False)
