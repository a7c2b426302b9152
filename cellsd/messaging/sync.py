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

``sync_instances`` (:func:`report_instances`) makes the owning cells report
every instance, so one run repairs every difference.

Anti-entropy (the periodic heal, :func:`anti_entropy`)
-----------------------------------------------------

Reporting every instance every period costs one message per instance. A
cell with parents instead compares digests with the top, after every
reconnect to a parent and on a timer, and reports only what differs, so a
lost update is healed within one period whatever its age:

1. The child buckets its live instances by ``project_id`` and hashes each
   bucket (:func:`bucket_digests`: SHA-256 over the sorted
   ``(uuid, generation)`` pairs).
2. It sends the digests up in one broadcast with ``need_response``
   (``instance_digests_at_top``). Only the top (a cell without parents)
   answers; middle cells answer None, so the parent of a middle cell is
   never mistaken for the top. The top computes the same digests over its
   live copies whose ``cell_name`` is the asking cell's path (the reversed
   routing path), and answers, for each bucket that differs or exists on
   one side only, its ``[uuid, generation]`` list: one round trip.
3. For those buckets only, the child reports whole (the usual
   ``instance_update_at_top``) each live instance the top is missing or has
   at another generation, and reports as a destroy (the full deleted
   object) each instance the top still has live that is deleted here.

Deleted instances are left out of the digests: a deleted instance is
represented by its absence. That keeps the buckets from growing with
every delete, and sidesteps the top's delete counting one generation more
than the owner's (:func:`destroy_instance_at_top`). Digests cover
generations, not content: a top copy edited behind our back at the same
generation is repaired by ``sync_instances``, not by anti-entropy.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cellsd.context import RequestContext
from cellsd.errors import InstanceNotFound, MalformedMessage
from cellsd.interfaces import ICellStore
from cellsd.objects import Instance
from cellsd.objects.base import parse_datetime

log = Logger()

#: Fields of the top's copy that are its own, never compared or written.
TOP_OWNED = frozenset({"id", "metadata", "created_at", "updated_at", "generation", "deleted_at"})

#: How much earlier than the caller's ``updated_since`` an owning cell looks
#: (sync_instances): the caller's clock and the owner's, which stamped
#: ``updated_at``, may differ (issue 7 injects ten minutes). Reporting a few
#: more instances is harmless: the top applies each by generation.
SYNC_CLOCK_SKEW = datetime.timedelta(minutes=15)

#: What the top reports for each instance report it handled.
APPLIED, REPAIRED, STALE, SAME = "applied", "repaired", "stale", "same"


class Reporter(Protocol):
    def instance_update_at_top(self, ctxt: RequestContext, instance: Instance) -> Any: ...
    def instance_destroy_at_top(self, ctxt: RequestContext, instance: Instance) -> Any: ...


class DigestReporter(Reporter, Protocol):
    def instance_digests_at_top(self, ctxt: RequestContext, digests: dict[str, str]) -> Any: ...


def as_instance(value: Any) -> Instance:
    """An Instance from an object or the plain dict older cells send."""
    if isinstance(value, Instance):
        return value.obj_clone()
    if not isinstance(value, Mapping):
        raise MalformedMessage(reason=f"an instance must be an object, not {type(value).__name__}")
    return Instance.from_dict(dict(value))


def differences(stored: Instance, reported: Instance) -> list[str]:
    """The fields ``reported`` sets to something else than ``stored`` has."""
    mine = stored.to_dict(include_unset=True)
    theirs = reported.to_dict()
    return sorted(k for k, v in theirs.items() if k not in TOP_OWNED and mine.get(k) != v)


async def apply_instance_at_top(store: ICellStore, instance: Any, cell_path: str) -> str:
    """Apply an owning cell's report of ``instance`` at the top (rules above)."""
    inst = as_instance(instance)
    if not inst.uuid:
        raise MalformedMessage(reason="an instance report without a uuid")
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
    """The instance filters of ``sync_instances`` (behaviour §3.3);
    ``updated_since`` is moved SYNC_CLOCK_SKEW earlier."""
    filters: dict[str, Any] = {}
    since = parse_datetime(updated_since) if updated_since else None
    if since is not None:
        filters["changes-since"] = since - SYNC_CLOCK_SKEW
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


# -- anti-entropy ---------------------------------------------------------------------


def _generation(inst: Instance) -> int:
    return int(inst.generation) if inst.obj_attr_is_set("generation") else 0


def buckets_of(instances: Iterable[Instance]) -> dict[str, dict[str, int]]:
    """``{project_id: {uuid: generation}}`` (no project: the "" bucket)."""
    buckets: dict[str, dict[str, int]] = {}
    for inst in instances:
        buckets.setdefault(str(inst.project_id or ""), {})[str(inst.uuid)] = _generation(inst)
    return buckets


def bucket_digest(entries: Mapping[str, int]) -> str:
    """SHA-256 over the sorted ``(uuid, generation)`` pairs of one bucket."""
    pairs = sorted(entries.items())
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def bucket_digests(buckets: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
    return {project: bucket_digest(entries) for project, entries in buckets.items()}


async def digests_at_top(
    store: ICellStore, cell_path: str, digests: Mapping[str, str]
) -> dict[str, list[list[Any]]]:
    """At the top: for each project bucket whose digest differs from the
    owning cell's (``digests``), the top's ``[uuid, generation]`` list of
    the cell's live instances; buckets that agree are left out."""
    mine = buckets_of(
        await store.instance_get_all_by_filters({"cell_name": cell_path, "deleted": False})
    )
    differing: dict[str, list[list[Any]]] = {}
    for project in set(mine) | set(digests):
        entries = mine.get(project, {})
        if bucket_digest(entries) != digests.get(project):
            differing[project] = [[u, g] for u, g in sorted(entries.items())]
    return differing


async def _await(d: Any) -> Any:
    if isinstance(d, Deferred):
        return await d
    return d


async def anti_entropy(reporter: DigestReporter, store: ICellStore, ctxt: RequestContext) -> int:
    """One anti-entropy run of a cell with parents (module docstring):
    digests up, then the differing instances reported whole. Returns how
    many instances were reported."""
    live = await store.instance_get_all_by_filters({"deleted": False})
    by_uuid = {str(inst.uuid): inst for inst in live}
    buckets = buckets_of(live)
    responses = await _await(reporter.instance_digests_at_top(ctxt, bucket_digests(buckets)))
    answers = [r.value for r in responses or [] if not r.failure and r.value is not None]
    for r in responses or []:
        if r.failure:
            log.warn("instance digests failed at {cell}: {error}", cell=r.cell_name, error=r.value)
    if not answers:
        log.warn("anti-entropy: no top answered the instance digests")
        return 0
    to_update: dict[str, Instance] = {}
    gone: set[str] = set()
    for answer in answers:
        for project, listed in dict(answer).items():
            theirs = {str(u): int(g) for u, g in listed}
            for uuid, generation in buckets.get(project, {}).items():
                if theirs.get(uuid) != generation:
                    to_update[uuid] = by_uuid[uuid]
            gone.update(u for u in theirs if u not in by_uuid)
    for inst in to_update.values():
        await _await(reporter.instance_update_at_top(ctxt, inst))
    destroyed = 0
    for uuid in sorted(gone):
        try:
            inst = await store.instance_get_by_uuid(uuid, "yes")
        except InstanceNotFound:
            log.warn("the top has a live copy of {uuid}, which this cell does not own", uuid=uuid)
            continue
        if not inst.deleted:  # created since our snapshot: the next run compares it
            continue
        await _await(reporter.instance_destroy_at_top(ctxt, inst))
        destroyed += 1
    return len(to_update) + destroyed
