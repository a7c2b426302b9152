"""The CellsManager's seed methods that read (behaviour §4.3): services,
hosts, compute nodes, task logs, instance actions, console ports,
migrations, key pairs and the cells table.

:class:`QueryMethods` is a mixin of :class:`cellsd.rpc.manager.CellsManager`.
Records of other cells come back cell-qualified: services and compute nodes
as proxy wire dicts (:mod:`cellsd.rpc.proxies`), task logs with ``id`` and
``host`` prefixed by ``<cell path>@``. A failing cell fails a query
(``value_or_raise`` of every Response); compute node stats are summed.
Where cells v1 had a defect (behaviour §8.1 items 10-14) the fixed
behaviour is implemented and marked ``Fix #n`` in the docstring.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from cellsd.context import RequestContext
from cellsd.errors import CellNotFound, CellRoutingInconsistency, InvalidArguments
from cellsd.interfaces import ICellStore
from cellsd.messaging.routing import split_cell_and_item, split_path
from cellsd.objects import Cell, Migration
from cellsd.rpc.errors import CellsUpdateUnsupported, InstanceUnknownCell, NoCellStore
from cellsd.rpc.manager_support import (
    SeedMethodsBase,
    as_mapping,
    item_id,
    responses_of,
    settled,
    value_of,
)
from cellsd.rpc.proxies import ComputeNodeProxy, ServiceProxy, plain_record
from cellsd.rpc.registry import rpc_method


class QueryMethods(SeedMethodsBase):
    """Seed methods that read, and the cells table."""

    _log = Logger()

    # -- services, hosts, compute nodes ---------------------------------------------

    @rpc_method("1.2")
    async def service_get_all(self, ctxt: RequestContext, filters: Any = None) -> list[Any]:
        """Every cell's services as ServiceProxy wire dicts; one failing
        cell fails the call."""
        answers = responses_of(await settled(self.ops.service_get_all(ctxt, filters)))
        return [
            ServiceProxy(service, r.cell_name).to_wire()
            for r in answers
            for service in r.value_or_raise() or []
        ]

    @rpc_method("1.2")
    async def service_get_by_compute_host(self, ctxt: RequestContext, host_name: str) -> Any:
        """The compute service of ``cell@host``, as a ServiceProxy."""
        cell, host = self.split_qualified("service_get_by_compute_host", "host_name", host_name)
        answer = await settled(self.ops.service_get_by_compute_host(ctxt, cell, host))
        return ServiceProxy(value_of(answer), answer.cell_name).to_wire()

    @rpc_method("1.17")
    async def get_host_uptime(self, ctxt: RequestContext, host_name: str) -> Any:
        cell, host = self.split_qualified("get_host_uptime", "host_name", host_name)
        return value_of(await settled(self.ops.get_host_uptime(ctxt, cell, host)))

    @rpc_method("1.7")
    async def service_update(
        self, ctxt: RequestContext, host_name: str, binary: str, params_to_update: Any
    ) -> Any:
        """Update a service of ``cell@host``; the updated ServiceProxy."""
        cell, host = self.split_qualified("service_update", "host_name", host_name)
        params = as_mapping(params_to_update, "service_update", "params_to_update")
        answer = await settled(self.ops.service_update(ctxt, cell, host, binary, params))
        return ServiceProxy(value_of(answer), answer.cell_name).to_wire()

    @rpc_method("1.26")
    async def service_delete(self, ctxt: RequestContext, cell_service_id: str) -> None:
        """Delete the service ``cell@id``. Fix #11: errors (e.g.
        ServiceNotFound) reach the caller."""
        cell, item = self.split_qualified("service_delete", "cell_service_id", cell_service_id)
        value_of(await settled(self.ops.service_delete(ctxt, cell, item_id(item))))

    @rpc_method("1.2")
    async def proxy_rpc_to_manager(
        self,
        ctxt: RequestContext,
        topic: str,
        rpc_message: Any,
        call: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Proxy an RPC to ``<topic>.<cell>@<host>``. Fix #14: the target
        cell gets the topic ``<topic>.<host>``, which its compute service
        listens on, and the host name."""
        base, sep, rest = topic.partition(".") if isinstance(topic, str) else ("", "", "")
        if not sep or not base or not rest:
            raise InvalidArguments(
                method_name="proxy_rpc_to_manager",
                reason=f"topic {topic!r} is not '<topic>.<cell>@<host>'",
            )
        cell, host = self.split_qualified("proxy_rpc_to_manager", "topic", rest)
        answer = await settled(
            self.ops.proxy_rpc_to_manager(
                ctxt, cell, host, f"{base}.{host}", rpc_message, call, timeout
            )
        )
        return value_of(answer)

    @rpc_method("1.3")
    async def task_log_get_all(
        self,
        ctxt: RequestContext,
        task_name: str,
        period_beginning: Any,
        period_ending: Any,
        host: str | None = None,
        state: str | None = None,
    ) -> list[dict[str, Any]]:
        """Task logs of every cell (host None), of one host (``cell@host``)
        or of one cell (a host without ``@`` names a cell); each log's
        ``id`` and ``host`` prefixed with its cell's path."""
        cell: str | None = None
        if host is not None:
            named, item = split_cell_and_item(host)
            cell, host = (host, None) if named is None else (named, item)
            cell = self.full_path(cell)
        answers = responses_of(
            await settled(
                self.ops.task_log_get_all(
                    ctxt, cell, task_name, period_beginning, period_ending, host=host, state=state
                )
            )
        )
        logs = []
        for r in answers:
            for log in r.value_or_raise() or []:
                row = plain_record(log)
                for key in ("id", "host"):
                    row[key] = f"{r.cell_name}@{row.get(key)}"
                logs.append(row)
        return logs

    @rpc_method("1.4")
    async def compute_node_get(self, ctxt: RequestContext, compute_id: str) -> Any:
        """The compute node ``cell@id`` as a ComputeNodeProxy of the cell
        asked for."""
        cell, item = self.split_qualified("compute_node_get", "compute_id", compute_id)
        answer = await settled(self.ops.compute_node_get(ctxt, cell, item_id(item)))
        return ComputeNodeProxy(value_of(answer), cell).to_wire()

    @rpc_method("1.4")
    async def compute_node_get_all(
        self, ctxt: RequestContext, hypervisor_match: str | None = None
    ) -> list[Any]:
        """Every cell's compute nodes as ComputeNodeProxy wire dicts."""
        answers = responses_of(
            await settled(self.ops.compute_node_get_all(ctxt, hypervisor_match=hypervisor_match))
        )
        return [
            ComputeNodeProxy(node, r.cell_name).to_wire()
            for r in answers
            for node in r.value_or_raise() or []
        ]

    @rpc_method("1.4")
    async def compute_node_stats(self, ctxt: RequestContext) -> dict[str, Any]:
        """Every key summed over the cells (missing keys count as 0)."""
        totals: dict[str, Any] = {}
        for r in responses_of(await settled(self.ops.compute_node_stats(ctxt))):
            for key, value in (r.value_or_raise() or {}).items():
                if value is None or isinstance(value, int | float):
                    totals[key] = totals.get(key, 0) + (value or 0)
        return totals

    # -- per-instance queries --------------------------------------------------------

    @rpc_method("1.5")
    async def actions_get(self, ctxt: RequestContext, cell_name: str, instance_uuid: str) -> Any:
        answer = self.ops.actions_get(ctxt, self.full_path(cell_name), instance_uuid)
        return value_of(await settled(answer))

    @rpc_method("1.5")
    async def action_get_by_request_id(
        self, ctxt: RequestContext, cell_name: str, instance_uuid: str, request_id: str
    ) -> Any:
        answer = self.ops.action_get_by_request_id(
            ctxt, self.full_path(cell_name), instance_uuid, request_id
        )
        return value_of(await settled(answer))

    @rpc_method("1.5")
    async def action_events_get(self, ctxt: RequestContext, cell_name: str, action_id: Any) -> Any:
        answer = self.ops.action_events_get(ctxt, self.full_path(cell_name), action_id)
        return value_of(await settled(answer))

    @rpc_method("1.6")
    async def validate_console_port(
        self, ctxt: RequestContext, instance_uuid: str, console_port: Any, console_type: str
    ) -> Any:
        """Asks the instance's cell, found in this cell's store;
        InstanceUnknownCell when the instance has no cell."""
        instance = await self.cell_store("validate_console_port").instance_get_by_uuid(
            instance_uuid
        )
        if not instance.cell_name:
            raise InstanceUnknownCell(instance_uuid)
        answer = self.ops.validate_console_port(
            ctxt, self.full_path(instance.cell_name), instance_uuid, console_port, console_type
        )
        return value_of(await settled(answer))

    @rpc_method("1.11")
    async def get_migrations(self, ctxt: RequestContext, filters: Any) -> list[Any]:
        """Migrations of one cell (``filters['cell_name']``) or of every cell
        below this one.

        Fix #10: the cell may be a full path or one relative below this
        cell; an unknown cell is CellNotFound (not an empty list), and any
        other failure is raised, whatever form its value has.
        """
        query = as_mapping(filters, "get_migrations", "filters", optional=True)
        cell = query.pop("cell_name", None)
        target = None
        if cell:
            target = self.full_path(str(cell))
            parts = split_path(target)
            if len(parts) > 1 and self.state.get_child_cell(parts[1]) is None:
                raise CellNotFound(cell_name=target)
        answers = responses_of(await settled(self.ops.get_migrations(ctxt, target, False, query)))
        migrations: list[Any] = []
        for r in answers:
            if r.failure and target and isinstance(r.value, CellRoutingInconsistency):
                raise CellNotFound(cell_name=target)
            for migration in r.value_or_raise() or []:
                if isinstance(migration, Migration):
                    migration.cell_name = r.cell_name
                migrations.append(migration)
        return migrations

    # -- key pairs and cells ----------------------------------------------------------

    @rpc_method("1.37")
    async def get_keypair_at_top(self, ctxt: RequestContext, user_id: str, name: str) -> Any:
        """The key pair from the top, or None (the client raises
        KeypairNotFound).

        Fix #12: failure Responses are never taken for a key pair. When no
        cell has the key pair and some cell failed, that failure is raised:
        an unreachable top is not "not found".
        """
        answers = responses_of(await settled(self.ops.get_keypair_at_top(ctxt, user_id, name)))
        found = [r for r in answers if not r.failure and r.value is not None]
        if not found:
            failed = [r for r in answers if r.failure]
            if failed:
                failed[0].value_or_raise()
            return None
        if len(found) > 1:
            self._log.warn(
                "key pair {name} of user {user_id} found in several cells: {cells}",
                name=name,
                user_id=user_id,
                cells=", ".join(r.cell_name for r in found),
            )
        return found[0].value

    @rpc_method("1.13")
    async def cell_create(self, ctxt: RequestContext, values: Any) -> Any:
        """Record a neighbour in the store's cells table (CellExists);
        CellsUpdateUnsupported without a store."""
        return await self._cells_table("cell_create").cell_create(
            as_mapping(values, "cell_create", "values")
        )

    @rpc_method("1.13")
    async def cell_update(self, ctxt: RequestContext, cell_name: str, values: Any) -> Any:
        return await self._cells_table("cell_update").cell_update(
            cell_name, as_mapping(values, "cell_update", "values")
        )

    @rpc_method("1.13")
    async def cell_delete(self, ctxt: RequestContext, cell_name: str) -> Any:
        return await self._cells_table("cell_delete").cell_delete(cell_name)

    @rpc_method("1.13")
    async def cell_get(self, ctxt: RequestContext, cell_name: str) -> Any:
        """Fix #13: a Cell record, not the in-memory state: the store's row,
        else the configured neighbour (parents first); CellNotFound."""
        try:
            store: ICellStore | None = self.cell_store("cell_get")
        except NoCellStore:
            store = None
        if store is not None:
            try:
                return await store.cell_get(cell_name)
            except CellNotFound:
                pass
        neighbour = self.state.get_parent_cell(cell_name) or self.state.get_child_cell(cell_name)
        if neighbour is None:
            raise CellNotFound(cell_name=cell_name)
        return Cell(
            name=neighbour.name,
            is_parent=neighbour.is_parent,
            weight_offset=neighbour.weight_offset,
            weight_scale=neighbour.weight_scale,
            transport_url=neighbour.endpoint,
        )

    def _cells_table(self, method: str) -> ICellStore:
        try:
            return self.cell_store(method)
        except NoCellStore:
            raise CellsUpdateUnsupported() from None
