"""Cell proxies: a record of another cell, named the way the API cell names it.

The manager answers service and compute node queries with records from
many cells. Each is wrapped in a proxy that prefixes its ``id`` and ``host``
with the path of the cell it came from (``cell@id``, ``cell@host``,
behaviour §1.3), so that the caller can pass them back to address that cell.

On the local RPC wire a proxy is the record's plain dict with ``id`` and
``host`` prefixed and two extra keys, ``cell_proxy.class_name`` and
``cell_proxy.cell_path``. :func:`rebuild_proxies` turns such dicts back into
proxies on the caller's side::

    services = rebuild_proxies(await api.service_get_all(ctxt))
    services[0].host        # 'api-cell!child-cell1@host1'
    services[0].cell_path   # 'api-cell!child-cell1'
    services[0].binary      # 'nova-compute' (passed through)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from cellsd.messaging.routing import cell_with_item, split_cell_and_item
from cellsd.objects import ComputeNode, Service
from cellsd.objects.base import CellsObject

CLASS_KEY = "cell_proxy.class_name"
PATH_KEY = "cell_proxy.cell_path"
_PREFIXED = ("id", "host")


def plain_record(value: Any) -> dict[str, Any]:
    """A record's plain dict form: an object's set fields, or a dict copy."""
    if isinstance(value, CellsObject):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"a record must be an object or a dict, not {type(value).__name__}")


def _unprefixed(value: Any) -> Any:
    """The item of ``cell@item``, an int again when it was one."""
    if not isinstance(value, str):
        return value
    _, item = split_cell_and_item(value)
    return int(item) if item.isdigit() else item


class CellProxy:
    """A record of another cell whose ``id`` and ``host`` read ``cell@...``.

    Item access (``p["host"]``) behaves like attribute access; every other
    attribute passes through to the wrapped record (an object or a dict).
    """

    class_name: ClassVar[str] = "CellProxy"
    record_class: ClassVar[type[CellsObject] | None] = None
    #: Attributes the proxy refuses to show.
    hidden: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, record: Any, cell_path: str) -> None:
        self._record = record
        self._cell_path = cell_path

    @property
    def cell_path(self) -> str:
        return self._cell_path

    @property
    def record(self) -> Any:
        """The wrapped record, unprefixed."""
        return self._record

    def _read(self, name: str) -> Any:
        if name in self.hidden:
            raise AttributeError(f"{self.class_name} hides {name!r}")
        if isinstance(self._record, Mapping):
            try:
                value = self._record[name]
            except KeyError:
                raise AttributeError(name) from None
        else:
            value = getattr(self._record, name)
        if name in _PREFIXED and value is not None:
            return cell_with_item(self._cell_path, value)
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._read(name)

    def __getitem__(self, name: str) -> Any:
        try:
            return self._read(name)
        except AttributeError:
            raise KeyError(name) from None

    def items(self) -> Iterator[tuple[str, Any]]:
        """The record's set fields, ``id`` and ``host`` prefixed."""
        for key in plain_record(self._record):
            if key not in self.hidden:
                yield key, self._read(key)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self.items()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CellProxy):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    def __hash__(self) -> int:
        return hash((self.class_name, self._cell_path))

    def __repr__(self) -> str:
        return f"{self.class_name}({self._record!r}, {self._cell_path!r})"

    def to_wire(self) -> dict[str, Any]:
        """The local RPC wire form: the plain record, ``id``/``host``
        prefixed, plus the two ``cell_proxy.*`` keys."""
        out = {k: v for k, v in plain_record(self._record).items() if k not in self.hidden}
        for key in _PREFIXED:
            if out.get(key) is not None:
                out[key] = cell_with_item(self._cell_path, out[key])
        out[CLASS_KEY] = self.class_name
        out[PATH_KEY] = self._cell_path
        return out

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> CellProxy:
        """Rebuild from :meth:`to_wire`'s form: the record unprefixed."""
        fields = {k: v for k, v in wire.items() if k not in (CLASS_KEY, PATH_KEY)}
        for key in _PREFIXED:
            if key in fields:
                fields[key] = _unprefixed(fields[key])
        record: Any = fields
        if cls.record_class is not None:
            record = cls.record_class.from_dict(fields)
        return cls(record, str(wire[PATH_KEY]))


class ServiceProxy(CellProxy):
    """A Service of another cell; hides ``compute_node``."""

    class_name = "ServiceProxy"
    record_class = Service
    hidden = frozenset({"compute_node"})


class ComputeNodeProxy(CellProxy):
    """A ComputeNode of another cell."""

    class_name = "ComputeNodeProxy"
    record_class = ComputeNode


PROXY_CLASSES: dict[str, type[CellProxy]] = {
    ServiceProxy.class_name: ServiceProxy,
    ComputeNodeProxy.class_name: ComputeNodeProxy,
}


def rebuild_proxies(value: Any) -> Any:
    """Turn every proxy wire dict in ``value`` (lists and dicts recursed)
    back into its proxy: both ``cell_proxy.*`` keys must be present."""
    if isinstance(value, list):
        return [rebuild_proxies(v) for v in value]
    if isinstance(value, Mapping):
        cls = PROXY_CLASSES.get(str(value.get(CLASS_KEY)))
        if cls is not None and PATH_KEY in value:
            return cls.from_wire(value)
        return {k: rebuild_proxies(v) for k, v in value.items()}
    return value
