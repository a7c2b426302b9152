"""Keeping the top's copy of every instance equal to the owning cell's.

The owning cell bumps an instance's generation on every change and reports
the whole instance upward (never only the changed fields: behaviour §8.4
#23, where Liberty's heal could not repair real drift). The top applies a
report by these rules, which make duplicated, reordered and repeated reports
harmless and repeated full reports repair any drift:

* newer generation than the top's copy: written (every field but the top's
  own: row id, metadata, creation time), ``cell_name`` set from the routing
  path, the row created if missing (§8.4 #24: an upsert keyed by uuid);
* older: stale, ignored;
* the same generation but different content: the top's copy drifted (it
  was changed behind our back); the owner's copy wins and is written;
* a report without a generation (an older cell, or a partial report such as
  an info cache update): its fields are written as they come.

``sync_instances`` and the periodic heal (:func:`report_instances`) make the
owning cells report every instance, so one run repairs every difference.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cellsd.context import RequestContext
from cellsd.errors import InstanceNotFound
from cellsd.interfaces import ICellStore
from cellsd.objects import Instance

log = Logger()

#: Fields of the top's copy that are its own, never compared or written.
TOP_OWNED = frozenset({"id", "metadata", "created_at", "updated_at", "generation", "deleted_at"})

#: What the top reports for each instance report it handled.
APPLIED, REPAIRED, STALE, SAME = "applied", "repaired", "stale", "same"


class Reporter(Protocol):
    def instance_update_at_top(self, ctxt: RequestContext, instance: Instance) -> Any: ...
    def instance_destroy_at_top(self, ctxt: RequestContext, instance: Instance) -> Any: ...


def as_instance(value: Any) -> Instance:
    """An Instance from an object or the plain dict older cells send."""
    if isinstance(value, Instance):
        return value.obj_clone()
    return Instance.from_dict(dict(value))


def differences(stored: Instance, reported: Instance) -> list[str]:
    """The fields ``reported`` sets to something else than ``stored`` has."""
    mine = stored.to_dict(include_unset=True)
    theirs = reported.to_dict()
    return sorted(k for k, v in theirs.items() if k not in TOP_OWNED and mine.get(k) != v)


async def apply_instance_at_top(store: ICellStore, instance: Any, cell_path: str) -> str:
    """Apply an owning cell's report of ``instance`` at the top (rules above)."""
    inst = as_instance(instance)
    inst.cell_name = cell_path
    uuid = str(inst.uuid)
    if not inst.obj_attr_is_set("generation"):
        try:
            stored = await store.instance_get_by_uuid(uuid, "yes")
        except InstanceNotFound:
            await store.instance_apply_update(inst, 0)
            return APPLIED
        inst.generation = stored.generation
        await store.instance_upsert_at_top(inst)
        return APPLIED
    if await store.instance_apply_update(inst):
        return APPLIED
    stored = await store.instance_get_by_uuid(uuid, "yes")
    if stored.generation > inst.generation:
        return STALE
    drift = differences(stored, inst) if stored.generation == inst.generation else []
    if not drift:
        return SAME
    log.warn(
        "the top's copy of {uuid} drifted ({fields}); repaired from {cell}",
        uuid=uuid,
        fields=", ".join(drift),
        cell=cell_path,
    )
    await store.instance_upsert_at_top(inst)
    return REPAIRED


async def destroy_instance_at_top(store: ICellStore, instance: Any, cell_path: str) -> None:
    """Write the owner's last report of a deleted instance, then delete the
    top's copy; a copy that is already gone is fine.

    The report is written whatever the top's generation: nothing can follow
    a delete at the owner, and the top's own delete counts one generation
    more than the owner's, so a newer-only rule would never let a repeated
    destroy repair the copy. Older reports still lose to it."""
    inst = as_instance(instance)
    if inst.uuid is None:
        return
    if inst.obj_attr_is_set("generation"):
        inst.cell_name = cell_path
        await store.instance_upsert_at_top(inst)
    with contextlib.suppress(InstanceNotFound):
        await store.instance_destroy(str(inst.uuid))


def sync_filters(
    project_id: Any = None, updated_since: Any = None, deleted: Any = False
) -> dict[str, Any]:
    """The instance filters of ``sync_instances`` (behaviour §3.3)."""
    filters: dict[str, Any] = {}
    if updated_since:
        filters["changes-since"] = updated_since
    if project_id:
        filters["project_id"] = project_id
    if not deleted:
        filters["deleted"] = False
    return filters


async def report_instances(
    reporter: Reporter,
    store: ICellStore,
    ctxt: RequestContext,
    filters: Mapping[str, Any],
) -> int:
    """Report every matching instance of this cell to the top, whole: a
    deleted one as a destroy. Each report is handed to the first hop before
    the next is sent. Returns how many were reported."""
    instances = await store.instance_get_all_by_filters(filters)
    for inst in instances:
        if inst.deleted:
            d = reporter.instance_destroy_at_top(ctxt, inst)
        else:
            d = reporter.instance_update_at_top(ctxt, inst)
        if isinstance(d, Deferred):
            await d
    return len(instances)


async def heal_instances(
    reporter: Reporter,
    store: ICellStore,
    ctxt: RequestContext,
    now: datetime.datetime,
    deleted_window: float = 86400.0,
) -> int:
    """One heal run of a cell with parents: every live instance, and those
    deleted within ``deleted_window`` seconds, reported to the top (Liberty
    healed one instance per run: behaviour §4.4, §8.8 #46)."""
    live = await report_instances(reporter, store, ctxt, {"deleted": False})
    since = now - datetime.timedelta(seconds=deleted_window)
    gone = await report_instances(reporter, store, ctxt, {"deleted": True, "changes-since": since})
    return live + gone
