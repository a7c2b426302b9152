"""cellsd's views for operators (local RPC 1.38): the instances a cell
keeps, for ``cellsctl instances`` (``cellsctl services`` uses the seed's
service_get_all)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cellsd.context import RequestContext
from cellsd.messaging.routing import DOWN
from cellsd.messaging.runner import MessageRunner
from cellsd.rpc.registry import rpc_method


def _record(value: Any) -> dict[str, Any]:
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


class ViewMethods:
    """Mixin of the CellsManager: cellsd's operator views (local RPC 1.38)."""

    runner: MessageRunner

    if TYPE_CHECKING:

        def resolve_cell(self, cell_name: str) -> tuple[str, str]: ...

    @rpc_method("1.38")
    async def instance_list(
        self,
        ctxt: RequestContext,
        cell_name: str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Every field of each instance a cell keeps (live ones unless
        ``filters`` says otherwise, e.g. ``{"deleted": None}`` for all),
        ordered by uuid. ``cell_name`` is a path below (or above) the
        connected cell; by default the connected cell itself (at the top,
        its copy of every instance, each with its owner's path)."""
        runner = self.runner
        target, direction = self.resolve_cell(cell_name) if cell_name else (runner.my_name, DOWN)
        wanted = {"deleted": False, **dict(filters or {})}
        if wanted.get("deleted") is None:
            del wanted["deleted"]
        response = await runner.send_targeted(
            ctxt, target, "instance_get_all", {"filters": wanted}, direction, need_response=True
        )
        assert response is not None
        rows = [_record(i) for i in response.value_or_raise()]
        return sorted(rows, key=lambda r: str(r.get("uuid")))
