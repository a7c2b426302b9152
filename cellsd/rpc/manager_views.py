"""cellsd's views for operators (local RPC 1.38): the instances and the
services as the connected cell sees them, for ``cellsctl instances`` and
``cellsctl services``.

:func:`instance_list` asks a cell (by default the connected one, at the top
the top's copy of every instance) for its instances with the targeted
``instance_get_all`` message; :func:`service_list` gathers every cell's
services with the ``service_get_all`` broadcast, each row named by its
cell's path, a cell that failed as a row with an ``error``. Both return plain
JSON-able dicts carrying every field of the records.

The CellsManager serves them once it inherits :class:`ViewMethods` and
registers them (nothing is registered by importing this module, so that a
manager without the mixin never advertises methods it lacks)::

    from cellsd.rpc.manager_views import ViewMethods, register_view_methods

    class CellsManager(InstanceMethods, QueryMethods, ViewMethods): ...

    register_view_methods()   # instance_list and service_list, since 1.38
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from cellsd.context import RequestContext
from cellsd.messaging.message import Response
from cellsd.messaging.routing import DOWN
from cellsd.messaging.runner import MessageRunner
from cellsd.rpc.registry import rpc_method


class HasRunner(Protocol):
    """What the views need of the CellsManager."""

    runner: MessageRunner

    def resolve_cell(self, cell_name: str) -> tuple[str, str]: ...


def _record(value: Any) -> dict[str, Any]:
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def _error_text(response: Response) -> str:
    exc = response.value
    name = getattr(type(exc), "_remote_of", type(exc)).__name__
    message = getattr(exc, "message", None) or str(exc).split("\n", 1)[0]
    return f"{name}: {message}"


async def instance_list(
    manager: HasRunner,
    ctxt: RequestContext,
    cell_name: str | None = None,
    filters: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every field of each instance a cell keeps (live ones unless
    ``filters`` says otherwise, e.g. ``{"deleted": None}`` for all),
    ordered by uuid. ``cell_name`` is a path below (or above) the
    connected cell; by default the connected cell itself."""
    runner = manager.runner
    target, direction = manager.resolve_cell(cell_name) if cell_name else (runner.my_name, DOWN)
    wanted = {"deleted": False, **dict(filters or {})}
    if wanted.get("deleted") is None:
        del wanted["deleted"]
    response = await runner.send_targeted(
        ctxt, target, "instance_get_all", {"filters": wanted}, direction, need_response=True
    )
    assert response is not None
    rows = [_record(i) for i in response.value_or_raise()]
    return sorted(rows, key=lambda r: str(r.get("uuid")))


async def service_list(manager: HasRunner, ctxt: RequestContext) -> list[dict[str, Any]]:
    """Every service of every cell below the connected one (and its own):
    the record's fields plus ``cell_name`` (the cell's path) and
    ``cell_host`` (``cell@host``, how other requests name the host). A cell
    that did not answer is one row ``{"cell_name", "error"}``."""
    responses = await manager.runner.service_get_all(ctxt, None)
    rows: list[dict[str, Any]] = []
    for response in responses:
        if response.failure:
            rows.append({"cell_name": response.cell_name, "error": _error_text(response)})
            continue
        for service in response.value:
            row = _record(service)
            row["cell_name"] = response.cell_name
            row["cell_host"] = f"{response.cell_name}@{row.get('host')}"
            rows.append(row)
    return sorted(rows, key=lambda r: (r["cell_name"], str(r.get("host")), str(r.get("binary"))))


#: The views as RPC methods, with the version that introduced them.
VIEW_METHODS = {"instance_list": "1.38", "service_list": "1.38"}


def register_view_methods() -> None:
    """Register the views as RPC methods of the CellsManager (which must
    inherit ViewMethods)."""
    for name, version in VIEW_METHODS.items():
        rpc_method(version)(getattr(ViewMethods, name))


class ViewMethods:
    """Mixin of the CellsManager serving the two views over RPC (1.38)."""

    runner: MessageRunner

    if TYPE_CHECKING:

        def resolve_cell(self, cell_name: str) -> tuple[str, str]: ...

    async def instance_list(
        self,
        ctxt: RequestContext,
        cell_name: str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The instances a cell keeps (the top's view by default)."""
        return await instance_list(self, ctxt, cell_name, filters)

    async def service_list(self, ctxt: RequestContext) -> list[dict[str, Any]]:
        """Every cell's services, each with its cell's path."""
        return await service_list(self, ctxt)
