"""What every cell keeps about its own hosts: services, compute nodes,
migrations and task logs."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred

from cellsd.errors import (
    ComputeHostNotFound,
    HostBinaryNotFound,
    MigrationNotFound,
    ServiceBinaryExists,
    ServiceNotFound,
    ServiceTopicExists,
    TaskAlreadyRunning,
    TaskNotRunning,
)
from cellsd.objects.base import CellsObject
from cellsd.objects.compute import ComputeNode, Migration, Service, TaskLog
from cellsd.store.core import (
    ObjT,
    StoreCore,
    as_datetime,
    get_row,
    insert_row,
    live,
    live_row,
    row_values,
    soft_delete_values,
    to_obj,
    utcnow,
)
from cellsd.store.schema import compute_nodes as nodes
from cellsd.store.schema import migrations, services, task_log

COMPUTE_BINARY = "nova-compute"

#: compute_node_statistics: the totals it reports, each over compute_nodes.
_STAT_COLUMNS = (
    "vcpus",
    "memory_mb",
    "local_gb",
    "vcpus_used",
    "memory_mb_used",
    "local_gb_used",
    "free_ram_mb",
    "free_disk_gb",
    "current_workload",
    "running_vms",
    "disk_available_least",
)


def _one(conn: Connection, cls: type[ObjT], table: sa.Table, row_id: int) -> ObjT:
    row = get_row(conn, table, row_id)
    assert row is not None
    return to_obj(cls, row)


def _create(
    conn: Connection, cls: type[ObjT], table: sa.Table, obj: CellsObject | Mapping[str, Any]
) -> ObjT:
    values = row_values(obj, table)
    values["created_at"] = values.get("created_at") or utcnow()
    return _one(conn, cls, table, insert_row(conn, table, values))


def _update(
    conn: Connection,
    cls: type[ObjT],
    table: sa.Table,
    row_id: int,
    values: Mapping[str, Any] | CellsObject,
) -> ObjT | None:
    """Update a live row; None when there is none."""
    if isinstance(values, CellsObject):
        values = {n: getattr(values, n) for n in values.obj_what_changed()}
    changes = row_values(values, table)
    for name in values:
        if name not in table.c:
            raise ValueError(f"{table.name} has no column {name!r}")
    changes["updated_at"] = utcnow()
    result = conn.execute(sa.update(table).where(table.c.id == row_id, live(table)).values(changes))
    if result.rowcount == 0:
        return None
    return _one(conn, cls, table, row_id)


class HostStore(StoreCore):
    """Services, compute nodes, migrations and task logs of this cell."""

    # -- services ---------------------------------------------------------------------

    def service_create(self, service: Service) -> Deferred[Service]:
        """Register a service; ServiceBinaryExists / ServiceTopicExists when
        the host already has a live one with that binary / topic."""

        def create(conn: Connection) -> Service:
            for column, error in (("binary", ServiceBinaryExists), ("topic", ServiceTopicExists)):
                value = getattr(service, column)
                if value is None:
                    continue
                taken = conn.execute(
                    sa.select(services.c.id).where(
                        services.c.host == service.host,
                        services.c[column] == value,
                        live(services),
                    )
                ).first()
                if taken is not None:
                    raise error(**{"host": service.host, column: value})
            return _create(conn, Service, services, service)

        return self._run(create)

    def service_get(self, service_id: int) -> Deferred[Service]:
        """A live service by id; ServiceNotFound."""

        def get(conn: Connection) -> Service:
            row = live_row(conn, services, services.c.id == service_id)
            if row is None:
                raise ServiceNotFound(service_id=service_id)
            return to_obj(Service, row)

        return self._run(get)

    def service_get_all(self, disabled: bool | None = None) -> Deferred[list[Service]]:
        """Live services, by id; only enabled or disabled ones when
        ``disabled`` is False / True."""

        def get_all(conn: Connection) -> list[Service]:
            query = sa.select(services).where(live(services)).order_by(services.c.id)
            if disabled is not None:
                query = query.where(services.c.disabled == disabled)
            return [to_obj(Service, r) for r in conn.execute(query).mappings()]

        return self._run(get_all)

    def service_get_by_host_and_binary(self, host: str, binary: str) -> Deferred[Service]:
        """The live service of ``binary`` on ``host``; HostBinaryNotFound."""

        def get(conn: Connection) -> Service:
            row = live_row(conn, services, services.c.host == host, services.c.binary == binary)
            if row is None:
                raise HostBinaryNotFound(host=host, binary=binary)
            return to_obj(Service, row)

        return self._run(get)

    def service_get_by_compute_host(self, host: str) -> Deferred[Service]:
        """The live nova-compute service on ``host``; ComputeHostNotFound."""
        d = self.service_get_by_host_and_binary(host, COMPUTE_BINARY)

        def not_found(failure: Any) -> Any:
            failure.trap(HostBinaryNotFound)
            raise ComputeHostNotFound(host=host)

        d.addErrback(not_found)
        return d

    def service_update(
        self, service_id: int, values: Mapping[str, Any] | Service
    ) -> Deferred[Service]:
        """Change a live service (a dict of fields, or a Service's changed
        fields), e.g. ``{"disabled": True, "disabled_reason": "..."}``;
        ServiceNotFound."""

        def update(conn: Connection) -> Service:
            service = _update(conn, Service, services, service_id, values)
            if service is None:
                raise ServiceNotFound(service_id=service_id)
            return service

        return self._run(update)

    def service_destroy(self, service_id: int) -> Deferred[None]:
        """Soft-delete a live service and its compute nodes; ServiceNotFound."""

        def destroy(conn: Connection) -> None:
            now = utcnow()
            result = conn.execute(
                sa.update(services)
                .where(services.c.id == service_id, live(services))
                .values(soft_delete_values(services, now))
            )
            if result.rowcount == 0:
                raise ServiceNotFound(service_id=service_id)
            conn.execute(
                sa.update(nodes)
                .where(nodes.c.service_id == service_id, live(nodes))
                .values(soft_delete_values(nodes, now))
            )

        return self._run(destroy)

    # -- compute nodes ------------------------------------------------------------------

    def compute_node_create(self, node: ComputeNode) -> Deferred[ComputeNode]:
        """Store a compute node (its id, if any, is ignored)."""
        return self._run(_create, ComputeNode, nodes, node)

    def compute_node_get(self, compute_id: int) -> Deferred[ComputeNode]:
        """A live compute node by id; ComputeHostNotFound."""

        def get(conn: Connection) -> ComputeNode:
            row = live_row(conn, nodes, nodes.c.id == compute_id)
            if row is None:
                raise ComputeHostNotFound(host=compute_id)
            return to_obj(ComputeNode, row)

        return self._run(get)

    def compute_node_get_all(
        self, hypervisor_match: str | None = None
    ) -> Deferred[list[ComputeNode]]:
        """Live compute nodes by id; with ``hypervisor_match``, those whose
        hypervisor_hostname contains it (LIKE, with % and _ taken literally)."""

        def get_all(conn: Connection) -> list[ComputeNode]:
            query = sa.select(nodes).where(live(nodes)).order_by(nodes.c.id)
            if hypervisor_match is not None:
                query = query.where(
                    nodes.c.hypervisor_hostname.contains(hypervisor_match, autoescape=True)
                )
            return [to_obj(ComputeNode, r) for r in conn.execute(query).mappings()]

        return self._run(get_all)

    def compute_node_get_all_by_host(self, host: str) -> Deferred[list[ComputeNode]]:
        """The live compute nodes of a host; ComputeHostNotFound if none."""

        def get(conn: Connection) -> list[ComputeNode]:
            rows = conn.execute(
                sa.select(nodes).where(nodes.c.host == host, live(nodes)).order_by(nodes.c.id)
            ).mappings()
            found = [to_obj(ComputeNode, r) for r in rows]
            if not found:
                raise ComputeHostNotFound(host=host)
            return found

        return self._run(get)

    def compute_node_update(
        self, compute_id: int, values: Mapping[str, Any] | ComputeNode
    ) -> Deferred[ComputeNode]:
        """Change a live compute node; ComputeHostNotFound."""

        def update(conn: Connection) -> ComputeNode:
            node = _update(conn, ComputeNode, nodes, compute_id, values)
            if node is None:
                raise ComputeHostNotFound(host=compute_id)
            return node

        return self._run(update)

    def compute_node_delete(self, compute_id: int) -> Deferred[None]:
        """Soft-delete a live compute node; ComputeHostNotFound."""

        def delete(conn: Connection) -> None:
            result = conn.execute(
                sa.update(nodes)
                .where(nodes.c.id == compute_id, live(nodes))
                .values(soft_delete_values(nodes, utcnow()))
            )
            if result.rowcount == 0:
                raise ComputeHostNotFound(host=compute_id)

        return self._run(delete)

    def compute_node_statistics(self) -> Deferred[dict[str, int]]:
        """Totals over the live compute nodes whose host has a live, enabled
        nova-compute service: ``count`` and the sums of vcpus, memory_mb,
        local_gb, their *_used, free_ram_mb, free_disk_gb, current_workload,
        running_vms and disk_available_least (0 for nothing or NULL)."""

        def stats(conn: Connection) -> dict[str, int]:
            enabled = sa.select(services.c.host).where(
                services.c.binary == COMPUTE_BINARY,
                services.c.disabled == sa.false(),
                live(services),
            )
            query = sa.select(
                sa.func.count(nodes.c.id).label("count"),
                *(sa.func.coalesce(sa.func.sum(nodes.c[c]), 0).label(c) for c in _STAT_COLUMNS),
            ).where(live(nodes), nodes.c.host.in_(enabled))
            row = conn.execute(query).mappings().one()
            return {k: int(v or 0) for k, v in row.items()}

        return self._run(stats)

    # -- migrations -----------------------------------------------------------------------

    def migration_create(self, migration: Migration) -> Deferred[Migration]:
        """Record a migration (its id, if any, is ignored)."""
        return self._run(_create, Migration, migrations, migration)

    def migration_get(self, migration_id: int) -> Deferred[Migration]:
        """A live migration by id; MigrationNotFound."""

        def get(conn: Connection) -> Migration:
            row = live_row(conn, migrations, migrations.c.id == migration_id)
            if row is None:
                raise MigrationNotFound(migration_id=migration_id)
            return to_obj(Migration, row)

        return self._run(get)

    def migration_update(
        self, migration_id: int, values: Mapping[str, Any] | Migration
    ) -> Deferred[Migration]:
        """Change a live migration (e.g. its status); MigrationNotFound."""

        def update(conn: Connection) -> Migration:
            migration = _update(conn, Migration, migrations, migration_id, values)
            if migration is None:
                raise MigrationNotFound(migration_id=migration_id)
            return migration

        return self._run(update)

    def migration_get_all_by_filters(
        self, filters: Mapping[str, Any] | None = None
    ) -> Deferred[list[Migration]]:
        """Live migrations by id. Filters: ``status`` (one or a list),
        ``host`` (source or destination compute), ``source_compute``,
        ``migration_type``, ``hidden``, ``instance_uuid``; other keys (such as
        ``cell_name``) are ignored."""
        filters = dict(filters or {})

        def get_all(conn: Connection) -> list[Migration]:
            query = sa.select(migrations).where(live(migrations)).order_by(migrations.c.id)
            status = filters.get("status")
            if status is not None:
                statuses = [status] if isinstance(status, str) else list(status)
                query = query.where(migrations.c.status.in_(statuses))
            host = filters.get("host")
            if host is not None:
                query = query.where(
                    sa.or_(migrations.c.source_compute == host, migrations.c.dest_compute == host)
                )
            for key in ("source_compute", "migration_type", "instance_uuid"):
                if filters.get(key) is not None:
                    query = query.where(migrations.c[key] == filters[key])
            if filters.get("hidden") is not None:
                query = query.where(migrations.c.hidden == bool(filters["hidden"]))
            return [to_obj(Migration, r) for r in conn.execute(query).mappings()]

        return self._run(get_all)

    # -- task logs ----------------------------------------------------------------------------

    def task_log_create(self, log: TaskLog) -> Deferred[TaskLog]:
        """Record a task log row; TaskAlreadyRunning if the same task, host
        and period is already recorded."""

        def create(conn: Connection) -> TaskLog:
            try:
                return _create(conn, TaskLog, task_log, log)
            except IntegrityError:
                raise TaskAlreadyRunning(task_name=log.task_name, host=log.host) from None

        return self._run(create)

    def task_log_begin_task(
        self,
        task_name: str,
        period_beginning: datetime.datetime | str,
        period_ending: datetime.datetime | str,
        host: str,
        task_items: int | None = None,
        message: str | None = None,
    ) -> Deferred[TaskLog]:
        """Record that a task started for a period (state RUNNING)."""
        log = TaskLog(
            task_name=task_name,
            period_beginning=as_datetime(period_beginning),
            period_ending=as_datetime(period_ending),
            host=host,
            state="RUNNING",
            task_items=task_items or 0,
            message=message or "",
        )
        return self.task_log_create(log)

    def task_log_end_task(
        self,
        task_name: str,
        period_beginning: datetime.datetime | str,
        period_ending: datetime.datetime | str,
        host: str,
        errors: int,
        message: str | None = None,
    ) -> Deferred[TaskLog]:
        """Mark a task run DONE with its error count; TaskNotRunning when no
        run of it was recorded."""
        begin, end = as_datetime(period_beginning), as_datetime(period_ending)

        def end_task(conn: Connection) -> TaskLog:
            key = (
                task_log.c.task_name == task_name,
                task_log.c.host == host,
                task_log.c.period_beginning == begin,
                task_log.c.period_ending == end,
                live(task_log),
            )
            values: dict[str, Any] = {"state": "DONE", "errors": errors, "updated_at": utcnow()}
            if message is not None:
                values["message"] = message
            if conn.execute(sa.update(task_log).where(*key).values(values)).rowcount == 0:
                raise TaskNotRunning(task_name=task_name, host=host)
            row = conn.execute(sa.select(task_log).where(*key)).mappings().one()
            return to_obj(TaskLog, row)

        return self._run(end_task)

    def task_log_get_all(
        self,
        task_name: str,
        period_beginning: datetime.datetime | str,
        period_ending: datetime.datetime | str,
        host: str | None = None,
        state: str | None = None,
    ) -> Deferred[list[TaskLog]]:
        """Task logs with exactly that task name and period, and that host /
        state when given (behaviour §3.2), by id."""
        begin, end = as_datetime(period_beginning), as_datetime(period_ending)

        def get_all(conn: Connection) -> list[TaskLog]:
            query = (
                sa.select(task_log)
                .where(
                    task_log.c.task_name == task_name,
                    task_log.c.period_beginning == begin,
                    task_log.c.period_ending == end,
                    live(task_log),
                )
                .order_by(task_log.c.id)
            )
            if host is not None:
                query = query.where(task_log.c.host == host)
            if state is not None:
                query = query.where(task_log.c.state == state)
            return [to_obj(TaskLog, r) for r in conn.execute(query).mappings()]

        return self._run(get_all)
