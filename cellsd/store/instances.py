"""Instances, their info caches and their faults.

The owning cell changes an instance with :meth:`instance_update`, which bumps
its ``generation``. The top applies what the owning cell reports with
:meth:`instance_apply_update`, which writes only when the report carries a
newer generation than the row, so duplicated or reordered reports are
harmless (behaviour §8.3 #20). Rows are matched by uuid, never by the
sender's row id (§8.4 #24).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from cellsd.errors import (
    InstanceExists,
    InstanceInfoCacheNotFound,
    InstanceNotFound,
    UnexpectedTaskStateError,
    UnexpectedVMStateError,
)
from cellsd.objects.base import CellsObject
from cellsd.objects.instance import Flavor, Instance
from cellsd.objects.records import InstanceFault
from cellsd.store.core import (
    StoreCore,
    as_datetime,
    get_row,
    insert_row,
    live,
    read_deleted_filter,
    row_values,
    to_obj,
    utcnow,
)
from cellsd.store.schema import block_device_mapping as bdms
from cellsd.store.schema import instance_faults as faults
from cellsd.store.schema import instance_info_caches as caches
from cellsd.store.schema import instances

#: Instance fields a report from below never writes at the top: the row id is
#: the top's own, metadata is owned by the API cell, deletion travels as
#: instance_destroy, and the generation is the report's, set explicitly.
_NOT_FROM_BELOW = ("metadata", "created_at", "generation", "uuid")

#: Columns an instance_update may not set directly.
_NOT_UPDATABLE = frozenset({"id", "uuid", "deleted", "deleted_at", "generation"})

#: Filters of instance_get_all_by_filters that are not plain column matches
#: (JSON columns cannot be compared with = on PostgreSQL; they are ignored).
_SPECIAL_FILTERS = frozenset(
    {"deleted", "changes-since", "uuid", "metadata", "system_metadata", "flavor"}
)

_SELECT = sa.select(instances, caches.c.network_info.label("info_cache")).select_from(
    instances.outerjoin(caches, caches.c.instance_uuid == instances.c.uuid)
)


def _states(value: Any) -> list[Any]:
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return [value]


def _state_in(column: sa.ColumnElement[Any], states: list[Any]) -> sa.ColumnElement[bool]:
    named = [s for s in states if s is not None]
    conds: list[sa.ColumnElement[bool]] = []
    if named:
        conds.append(column.in_(named))
    if None in states:
        conds.append(column.is_(None))
    return sa.or_(*conds) if conds else sa.false()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _get(conn: Connection, instance_uuid: str, read_deleted: str = "no") -> Instance:
    row = (
        conn.execute(
            _SELECT.where(
                instances.c.uuid == instance_uuid,
                *read_deleted_filter(instances, read_deleted),
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise InstanceNotFound(instance_id=instance_uuid)
    return to_obj(Instance, row)


def _write_info_cache(conn: Connection, instance_uuid: str, network_info: Any) -> None:
    now = utcnow()
    text = _json([] if network_info is None else network_info)
    result = conn.execute(
        sa.update(caches)
        .where(caches.c.instance_uuid == instance_uuid)
        .values(network_info=text, updated_at=now)
    )
    if result.rowcount == 0:
        insert_row(
            conn,
            caches,
            {"instance_uuid": instance_uuid, "network_info": text, "created_at": now},
        )


def _update_values(updates: Mapping[str, Any] | Instance) -> dict[str, Any]:
    if isinstance(updates, CellsObject):
        updates = {n: getattr(updates, n) for n in updates.obj_what_changed()}
    values: dict[str, Any] = {}
    for name, value in updates.items():
        if name in _NOT_UPDATABLE:
            continue
        if name != "info_cache" and name not in instances.c:
            raise ValueError(f"instances have no field {name!r}")
        if name == "flavor" and value is not None:
            flavor = value if isinstance(value, Flavor) else Flavor.from_dict(value)
            value = flavor.to_dict(include_unset=True)
        elif name in ("metadata", "system_metadata"):
            value = dict(value or {})
        values[name] = value
    return values


def _insert(conn: Connection, instance: Instance, generation: int) -> None:
    now = utcnow()
    values = row_values(instance, instances)
    values["uuid"] = instance.uuid
    values["generation"] = generation
    values["created_at"] = instance.created_at or now
    values.setdefault("metadata", {})
    values.setdefault("system_metadata", {})
    if instance.deleted:
        values["deleted_at"] = instance.deleted_at or now
    row_id = insert_row(conn, instances, values)
    if instance.deleted:
        # A copy of an instance already deleted where it lives stays deleted.
        conn.execute(sa.update(instances).where(instances.c.id == row_id).values(deleted=row_id))
    _write_info_cache(conn, str(instance.uuid), instance.info_cache)


def _upsert(conn: Connection, instance: Instance, generation: int, newer_only: bool) -> bool:
    if not instance.uuid:
        raise ValueError("an instance without uuid cannot be applied")
    values = row_values(instance, instances, exclude=_NOT_FROM_BELOW)
    values["generation"] = generation
    if values.get("updated_at") is None:
        values["updated_at"] = utcnow()
    conds = [instances.c.uuid == instance.uuid]
    if newer_only:
        conds.append(instances.c.generation < generation)
    if conn.execute(sa.update(instances).where(*conds).values(values)).rowcount:
        if instance.obj_attr_is_set("info_cache"):
            _write_info_cache(conn, instance.uuid, instance.info_cache)
        return True
    exists = conn.execute(
        sa.select(instances.c.id).where(instances.c.uuid == instance.uuid)
    ).first()
    if exists is not None:
        return False
    _insert(conn, instance, generation)
    return True


def _filtered(filters: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = []
    deleted = filters.get("deleted")
    if deleted is not None:
        conds.append(instances.c.deleted != 0 if deleted else instances.c.deleted == 0)
    since = as_datetime(filters.get("changes-since"))
    if since is not None:
        changed = sa.func.coalesce(instances.c.updated_at, instances.c.created_at)
        conds.append(sa.or_(changed >= since, instances.c.deleted_at >= since))
    if "uuid" in filters:
        conds.append(instances.c.uuid.in_(_states(filters["uuid"])))
    for name, value in filters.items():
        if name in _SPECIAL_FILTERS or name not in instances.c:
            continue
        column = instances.c[name]
        if isinstance(value, list | tuple | set | frozenset):
            conds.append(_state_in(column, list(value)))
        else:
            conds.append(column.is_(None) if value is None else column == value)
    return conds


class InstanceStore(StoreCore):
    """Instances, info caches and faults of a cell store."""

    # -- instances -------------------------------------------------------------

    def instance_create(
        self, instance: Instance, generation: int | None = None
    ) -> Deferred[Instance]:
        """Store a new instance (a uuid is made if it has none); InstanceExists
        if the uuid is taken. ``generation`` defaults to the instance's own if
        set, else 1: the owning cell's creation is its first change. An API
        cell that records a boot request before any cell owns it passes 0, so
        that the owning cell's first report always applies."""

        def create(conn: Connection) -> Instance:
            new = instance.obj_clone()
            if not new.uuid:
                new.uuid = str(uuidlib.uuid4())
            gen = generation
            if gen is None:
                gen = new.generation if new.obj_attr_is_set("generation") else 1
            taken = conn.execute(
                sa.select(instances.c.id).where(instances.c.uuid == new.uuid)
            ).first()
            if taken is not None:
                raise InstanceExists(name=new.uuid)
            _insert(conn, new, gen)
            return _get(conn, str(new.uuid))

        return self._run(create)

    def instance_get_by_uuid(
        self, instance_uuid: str, read_deleted: str = "no"
    ) -> Deferred[Instance]:
        """The instance, with its info cache; InstanceNotFound."""
        return self._run(_get, instance_uuid, read_deleted)

    def instance_get_all_by_filters(
        self, filters: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> Deferred[list[Instance]]:
        """Instances matching ``filters``, live ones first, oldest first.

        ``deleted`` (True: only soft-deleted, False: only live, absent: both),
        ``changes-since`` (datetime or ISO-8601: created, updated or deleted
        since), ``uuid`` (one or a list), and any instance column (a value or
        a list of values), e.g. ``project_id``, ``host``, ``cell_name``.
        Unknown keys are ignored.
        """
        conds = _filtered(filters or {})

        def get_all(conn: Connection) -> list[Instance]:
            query = _SELECT.where(*conds).order_by(
                sa.case((instances.c.deleted == 0, 0), else_=1),
                instances.c.created_at,
                instances.c.id,
            )
            if limit is not None:
                query = query.limit(limit)
            return [to_obj(Instance, r) for r in conn.execute(query).mappings()]

        return self._run(get_all)

    def instance_count_in_subtree(self, path: str) -> Deferred[int]:
        """How many live instances belong to the cell at ``path`` or below
        it: their ``cell_name`` is ``path``, or a path that starts with it,
        ends with it or holds it as a whole run of segments (``api!c1``
        matches ``api!c1``, ``api!c1!g1``, ``top!api!c1``; not ``api!c10``)."""
        column = instances.c.cell_name
        matches = sa.or_(
            column == path,
            column.like(f"{path}!%"),
            column.like(f"%!{path}"),
            column.like(f"%!{path}!%"),
        )

        def count(conn: Connection) -> int:
            query = sa.select(sa.func.count()).select_from(instances)
            return int(conn.execute(query.where(live(instances), matches)).scalar_one())

        return self._run(count)

    def instance_update(
        self,
        instance_uuid: str,
        updates: Mapping[str, Any] | Instance,
        expected_vm_state: Any = None,
        expected_task_state: Any = None,
    ) -> Deferred[Instance]:
        """Change a live instance in the owning cell and bump its generation.

        ``updates`` is a dict of fields, or an Instance whose changed fields
        are written. ``expected_vm_state`` / ``expected_task_state`` (a state
        or a list; ``[None]`` expects no task) make the write conditional:
        UnexpectedVMStateError / UnexpectedTaskStateError when the stored
        state differs. InstanceNotFound when there is no live instance.
        """
        values = _update_values(updates)
        network_info_set = "info_cache" in values
        network_info = values.pop("info_cache", None)
        vm_states = None if expected_vm_state is None else _states(expected_vm_state)
        task_states = None if expected_task_state is None else _states(expected_task_state)

        def update(conn: Connection) -> Instance:
            values["updated_at"] = utcnow()
            values["generation"] = instances.c.generation + 1
            conds = [instances.c.uuid == instance_uuid, live(instances)]
            if vm_states is not None:
                conds.append(_state_in(instances.c.vm_state, vm_states))
            if task_states is not None:
                conds.append(_state_in(instances.c.task_state, task_states))
            result = conn.execute(sa.update(instances).where(*conds).values(values))
            if result.rowcount == 0:
                row = conn.execute(
                    sa.select(instances.c.vm_state, instances.c.task_state).where(
                        instances.c.uuid == instance_uuid, live(instances)
                    )
                ).first()
                if row is None:
                    raise InstanceNotFound(instance_id=instance_uuid)
                if vm_states is not None and row.vm_state not in vm_states:
                    raise UnexpectedVMStateError(
                        instance_uuid=instance_uuid,
                        expected=vm_states,
                        actual=row.vm_state,
                    )
                raise UnexpectedTaskStateError(
                    instance_uuid=instance_uuid,
                    expected=task_states,
                    actual=row.task_state,
                )
            if network_info_set:
                _write_info_cache(conn, instance_uuid, network_info)
            return _get(conn, instance_uuid)

        return self._run(update)

    def instance_apply_update(
        self, instance: Instance, generation: int | None = None
    ) -> Deferred[bool]:
        """At the top: apply the owning cell's report of ``instance`` only if
        its generation (``generation``, else the instance's) is newer than the
        stored one; create the row if there is none. Writes every set field
        but id, uuid, metadata (the API cell's) and the soft-delete columns,
        soft-deleted rows included. True when something was written."""
        gen = instance.generation if generation is None else generation
        return self._run_retrying(_upsert, instance, gen, True)

    def instance_upsert_at_top(self, instance: Instance) -> Deferred[Instance]:
        """At the top: write ``instance`` keyed by uuid whatever the stored
        generation (a full repair), creating it if missing; its row id is
        ignored. Returns the stored instance."""

        def upsert(conn: Connection) -> Instance:
            _upsert(conn, instance, instance.generation, False)
            return _get(conn, str(instance.uuid), "yes")

        return self._run_retrying(upsert)

    def instance_destroy(self, instance_uuid: str) -> Deferred[Instance]:
        """Soft-delete a live instance (and its info cache and block device
        mappings), bumping its generation; returns the deleted instance.
        InstanceNotFound if there is no live instance with that uuid."""

        def destroy(conn: Connection) -> Instance:
            now = utcnow()
            result = conn.execute(
                sa.update(instances)
                .where(instances.c.uuid == instance_uuid, live(instances))
                .values(
                    deleted=instances.c.id,
                    deleted_at=now,
                    updated_at=now,
                    generation=instances.c.generation + 1,
                )
            )
            if result.rowcount == 0:
                raise InstanceNotFound(instance_id=instance_uuid)
            for table in (caches, bdms):
                conn.execute(
                    sa.update(table)
                    .where(table.c.instance_uuid == instance_uuid, live(table))
                    .values(deleted=table.c.id, deleted_at=now, updated_at=now)
                )
            return _get(conn, instance_uuid, "only")

        return self._run(destroy)

    # -- info caches -------------------------------------------------------------

    def instance_info_cache_update(
        self, instance_uuid: str, network_info: Any
    ) -> Deferred[Instance]:
        """Replace the network_info of a live instance (bumping its
        generation); returns the instance. InstanceNotFound."""
        return self.instance_update(instance_uuid, {"info_cache": network_info})

    def instance_info_cache_get(self, instance_uuid: str) -> Deferred[Any]:
        """The decoded network_info; InstanceInfoCacheNotFound."""

        def get(conn: Connection) -> Any:
            row = conn.execute(
                sa.select(caches.c.network_info).where(
                    caches.c.instance_uuid == instance_uuid, live(caches)
                )
            ).first()
            if row is None:
                raise InstanceInfoCacheNotFound(instance_uuid=instance_uuid)
            return orjson.loads(row.network_info) if row.network_info else None

        return self._run(get)

    # -- faults --------------------------------------------------------------------

    def instance_fault_create(
        self, fault: InstanceFault | Mapping[str, Any]
    ) -> Deferred[InstanceFault]:
        """Record a fault (its row id, if any, is another cell's and dropped)."""
        values = row_values(fault, faults)

        def create(conn: Connection) -> InstanceFault:
            values.setdefault("created_at", utcnow())
            values.setdefault("code", 500)
            row = get_row(conn, faults, insert_row(conn, faults, values))
            assert row is not None
            return to_obj(InstanceFault, row)

        return self._run(create)

    def instance_fault_get_by_instance_uuids(
        self, instance_uuids: Sequence[str], latest: bool = False
    ) -> Deferred[dict[str, list[InstanceFault]]]:
        """Faults per instance uuid, newest first (only the newest if
        ``latest``); every asked uuid is a key."""
        uuids = list(instance_uuids)

        def get(conn: Connection) -> dict[str, list[InstanceFault]]:
            result: dict[str, list[InstanceFault]] = {u: [] for u in uuids}
            rows = conn.execute(
                sa.select(faults)
                .where(faults.c.instance_uuid.in_(uuids), live(faults))
                .order_by(faults.c.created_at.desc(), faults.c.id.desc())
            ).mappings()
            for row in rows:
                found = result[row["instance_uuid"]]
                if not (latest and found):
                    found.append(to_obj(InstanceFault, row))
            return result

        return self._run(get)
