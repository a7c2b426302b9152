"""The cell store's instances, info caches and faults, on SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from cellsd.errors import (
    InstanceExists,
    InstanceInfoCacheNotFound,
    InstanceNotFound,
    UnexpectedTaskStateError,
    UnexpectedVMStateError,
)
from cellsd.objects import BlockDeviceMapping, Flavor, Instance, InstanceFault
from tests.unit.test_store_support import PostgresBackend, SQLiteBackend, StoreCase

UTC = datetime.UTC
T0 = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NETWORK_INFO = [{"id": "vif-1", "address": "fa:16:3e:00:00:01", "network": {"label": "net"}}]


def new_instance(**kw: Any) -> Instance:
    values: dict[str, Any] = {
        "user_id": "user",
        "project_id": "proj",
        "vm_state": "building",
        "task_state": "scheduling",
        "memory_mb": 512,
        "vcpus": 1,
        "flavor": Flavor(flavorid="m1.tiny", name="m1.tiny", memory_mb=512, vcpus=1),
        "metadata": {"owner": "api"},
        "system_metadata": {"image_os": "linux"},
    }
    values.update(kw)
    return Instance(**values)


class InstanceTests(StoreCase):
    # -- create and read ------------------------------------------------------

    @inlineCallbacks
    def test_create_then_get(self) -> Any:
        """A created instance reads back with every field it was given, a
        uuid, a local id, creation time, an info cache and generation 1."""
        created = yield self.store.instance_create(
            new_instance(launched_at=T0, info_cache=NETWORK_INFO, locked=True)
        )
        self.assertTrue(created.uuid)
        self.assertIsInstance(created.id, int)
        self.assertEqual(created.generation, 1)
        self.assertIsNotNone(created.created_at)
        self.assertEqual(created.obj_what_changed(), set())
        got = yield self.store.instance_get_by_uuid(created.uuid)
        self.assertEqual(got, created)
        self.assertEqual(got.launched_at, T0)
        self.assertEqual(got.launched_at.tzinfo, UTC)
        self.assertEqual(got.metadata, {"owner": "api"})
        self.assertEqual(got.system_metadata, {"image_os": "linux"})
        self.assertEqual(got.flavor.flavorid, "m1.tiny")
        self.assertEqual(got.info_cache, NETWORK_INFO)
        self.assertTrue(got.locked)
        self.assertFalse(got.deleted)

    @inlineCallbacks
    def test_create_generation(self) -> Any:
        """The generation is the instance's own when set, or the one passed
        (an API cell's provisional record uses 0)."""
        mine = yield self.store.instance_create(new_instance(generation=5))
        self.assertEqual(mine.generation, 5)
        provisional = yield self.store.instance_create(new_instance(), generation=0)
        self.assertEqual(provisional.generation, 0)

    @inlineCallbacks
    def test_create_refuses_a_taken_uuid(self) -> Any:
        """InstanceExists when the uuid is already stored."""
        created = yield self.store.instance_create(new_instance())
        with self.assertRaises(InstanceExists):
            yield self.store.instance_create(new_instance(uuid=created.uuid))

    @inlineCallbacks
    def test_get_unknown_uuid(self) -> Any:
        """InstanceNotFound for a uuid that is not stored."""
        with self.assertRaises(InstanceNotFound):
            yield self.store.instance_get_by_uuid("no-such-uuid")

    @inlineCallbacks
    def test_get_all_by_filters(self) -> Any:
        """Filters: project_id, host, uuid list, column lists, deleted,
        changes-since; live rows first; unknown keys ignored; limit."""
        a = yield self.store.instance_create(new_instance(project_id="p1", host="h1"))
        b = yield self.store.instance_create(new_instance(project_id="p1", host="h2"))
        c = yield self.store.instance_create(new_instance(project_id="p2", host="h1"))
        yield self.store.instance_destroy(a.uuid)

        def uuids(found: list[Instance]) -> list[str | None]:
            return [i.uuid for i in found]

        found = yield self.store.instance_get_all_by_filters({"project_id": "p1"})
        self.assertEqual(uuids(found), [b.uuid, a.uuid])  # live first
        found = yield self.store.instance_get_all_by_filters({"project_id": "p1", "deleted": False})
        self.assertEqual(uuids(found), [b.uuid])
        found = yield self.store.instance_get_all_by_filters({"deleted": True})
        self.assertEqual(uuids(found), [a.uuid])
        found = yield self.store.instance_get_all_by_filters(
            {"host": ["h1", "h2"], "deleted": False}
        )
        self.assertEqual(uuids(found), [b.uuid, c.uuid])
        found = yield self.store.instance_get_all_by_filters({"uuid": [a.uuid, c.uuid]})
        self.assertEqual(uuids(found), [c.uuid, a.uuid])
        found = yield self.store.instance_get_all_by_filters(
            {"no_such_key": 1, "metadata": {"owner": "api"}, "host": "h2"}
        )
        self.assertEqual(uuids(found), [b.uuid])
        found = yield self.store.instance_get_all_by_filters(None, limit=2)
        self.assertEqual(len(found), 2)

    @inlineCallbacks
    def test_changes_since(self) -> Any:
        """changes-since (a datetime or ISO string) finds instances created,
        updated or deleted since then."""
        old = yield self.store.instance_create(new_instance(created_at=T0))
        new = yield self.store.instance_create(new_instance())
        since = datetime.datetime.now(UTC) - datetime.timedelta(minutes=5)
        found = yield self.store.instance_get_all_by_filters({"changes-since": since})
        self.assertEqual([i.uuid for i in found], [new.uuid])
        yield self.store.instance_update(old.uuid, {"host": "h9"})
        found = yield self.store.instance_get_all_by_filters({"changes-since": since.isoformat()})
        self.assertEqual({i.uuid for i in found}, {old.uuid, new.uuid})

    # -- updates in the owning cell ------------------------------------------------

    @inlineCallbacks
    def test_update_writes_fields_and_bumps_generation(self) -> Any:
        """instance_update writes the given fields, sets updated_at and
        increments generation each time."""
        created = yield self.store.instance_create(new_instance())
        updated = yield self.store.instance_update(
            created.uuid,
            {"vm_state": "active", "task_state": None, "host": "h1", "launched_at": T0},
        )
        self.assertEqual((updated.vm_state, updated.task_state), ("active", None))
        self.assertEqual(updated.host, "h1")
        self.assertEqual(updated.generation, 2)
        self.assertIsNotNone(updated.updated_at)
        again = yield self.store.instance_update(created.uuid, {"progress": 50})
        self.assertEqual(again.generation, 3)

    @inlineCallbacks
    def test_update_from_an_object_writes_its_changes(self) -> Any:
        """An Instance as the update writes only its changed fields, flavor
        and metadata included."""
        created = yield self.store.instance_create(new_instance(host="h1"))
        change = Instance.from_dict({"uuid": created.uuid, "host": "stale"})
        change.vm_state = "active"
        change.flavor = Flavor(flavorid="m1.big", memory_mb=4096)
        change.metadata = {"owner": "api", "new": "1"}
        updated = yield self.store.instance_update(created.uuid, change)
        self.assertEqual(updated.host, "h1")
        self.assertEqual(updated.vm_state, "active")
        self.assertEqual(updated.flavor.memory_mb, 4096)
        self.assertEqual(updated.metadata, {"owner": "api", "new": "1"})

    @inlineCallbacks
    def test_update_refuses_unknown_fields(self) -> Any:
        """A key that is not an instance field is a programming error."""
        created = yield self.store.instance_create(new_instance())
        with self.assertRaises(ValueError):
            yield self.store.instance_update(created.uuid, {"bogus": 1})

    @inlineCallbacks
    def test_task_state_guard(self) -> Any:
        """With expected_task_state, the write happens only from those states;
        otherwise UnexpectedTaskStateError names the actual state and nothing
        changes. [None] expects no task."""
        created = yield self.store.instance_create(new_instance(task_state=None))
        with self.assertRaises(UnexpectedTaskStateError) as caught:
            yield self.store.instance_update(
                created.uuid, {"task_state": "rebooting"}, expected_task_state="powering-off"
            )
        self.assertEqual(caught.exception.kwargs["actual"], None)
        unchanged = yield self.store.instance_get_by_uuid(created.uuid)
        self.assertEqual(unchanged.generation, created.generation)
        updated = yield self.store.instance_update(
            created.uuid, {"task_state": "rebooting"}, expected_task_state=[None]
        )
        self.assertEqual(updated.task_state, "rebooting")
        updated = yield self.store.instance_update(
            created.uuid, {"task_state": None}, expected_task_state=["rebooting", "x"]
        )
        self.assertIsNone(updated.task_state)

    @inlineCallbacks
    def test_vm_state_guard(self) -> Any:
        """expected_vm_state guards the same way, with UnexpectedVMStateError
        (a kind of UnexpectedTaskStateError)."""
        created = yield self.store.instance_create(new_instance(vm_state="stopped"))
        with self.assertRaises(UnexpectedVMStateError):
            yield self.store.instance_update(
                created.uuid, {"vm_state": "active"}, expected_vm_state=["active"]
            )
        self.assertTrue(issubclass(UnexpectedVMStateError, UnexpectedTaskStateError))
        updated = yield self.store.instance_update(
            created.uuid,
            {"vm_state": "active"},
            expected_vm_state="stopped",
            expected_task_state=["scheduling"],
        )
        self.assertEqual(updated.vm_state, "active")

    @inlineCallbacks
    def test_update_of_missing_or_deleted_instance(self) -> Any:
        """InstanceNotFound for an unknown or soft-deleted instance, guards or not."""
        with self.assertRaises(InstanceNotFound):
            yield self.store.instance_update("nope", {"host": "h"})
        created = yield self.store.instance_create(new_instance())
        yield self.store.instance_destroy(created.uuid)
        with self.assertRaises(InstanceNotFound):
            yield self.store.instance_update(
                created.uuid, {"host": "h"}, expected_task_state=["scheduling"]
            )

    # -- the top's replica ------------------------------------------------------------

    @inlineCallbacks
    def test_apply_update_only_when_newer(self) -> Any:
        """The top applies a report with a newer generation; an older one or
        a duplicate of the current one is ignored (returns False)."""
        top = yield self.store.instance_create(new_instance(), generation=0)
        report = top.obj_clone()
        report.id = 999  # the child's row id: never used
        report.vm_state, report.host, report.cell_name = "active", "h1", "api!c1"
        report.generation = 3
        applied = yield self.store.instance_apply_update(report)
        self.assertTrue(applied)
        duplicate = yield self.store.instance_apply_update(report)
        self.assertFalse(duplicate)
        stale = report.obj_clone()
        stale.vm_state, stale.generation = "building", 2
        applied = yield self.store.instance_apply_update(stale)
        self.assertFalse(applied)
        got = yield self.store.instance_get_by_uuid(top.uuid)
        self.assertEqual((got.vm_state, got.host, got.cell_name), ("active", "h1", "api!c1"))
        self.assertEqual((got.id, got.generation), (top.id, 3))

    @inlineCallbacks
    def test_apply_update_reordered_reports_converge(self) -> Any:
        """Reports delivered out of order leave the newest state."""
        top = yield self.store.instance_create(new_instance(), generation=0)
        reports = []
        for gen, state in ((1, "building"), (2, "active"), (3, "stopped")):
            report = Instance.from_dict({"uuid": top.uuid, "vm_state": state, "generation": gen})
            reports.append(report)
        for report in (reports[2], reports[0], reports[1], reports[2]):
            yield self.store.instance_apply_update(report)
        got = yield self.store.instance_get_by_uuid(top.uuid)
        self.assertEqual((got.vm_state, got.generation), ("stopped", 3))

    @inlineCallbacks
    def test_apply_update_explicit_generation(self) -> Any:
        """The generation argument overrides the object's."""
        top = yield self.store.instance_create(new_instance(), generation=0)
        report = Instance.from_dict({"uuid": top.uuid, "host": "h2", "generation": 0})
        applied = yield self.store.instance_apply_update(report, generation=7)
        self.assertTrue(applied)
        got = yield self.store.instance_get_by_uuid(top.uuid)
        self.assertEqual((got.host, got.generation), ("h2", 7))

    @inlineCallbacks
    def test_apply_update_keeps_api_metadata(self) -> Any:
        """Metadata is the API cell's: a report from below does not change it,
        while system_metadata does travel up."""
        top = yield self.store.instance_create(new_instance(), generation=0)
        report = Instance.from_dict(
            {
                "uuid": top.uuid,
                "metadata": {"child": "x"},
                "system_metadata": {"image_os": "bsd"},
                "generation": 1,
            }
        )
        yield self.store.instance_apply_update(report)
        got = yield self.store.instance_get_by_uuid(top.uuid)
        self.assertEqual(got.metadata, {"owner": "api"})
        self.assertEqual(got.system_metadata, {"image_os": "bsd"})

    @inlineCallbacks
    def test_apply_update_writes_only_set_fields(self) -> Any:
        """A partial report (uuid and info cache, as an info cache change
        travels) changes the info cache and nothing else."""
        top = yield self.store.instance_create(new_instance(host="h1"), generation=0)
        report = Instance.from_dict({"uuid": top.uuid, "info_cache": NETWORK_INFO, "generation": 1})
        yield self.store.instance_apply_update(report)
        got = yield self.store.instance_get_by_uuid(top.uuid)
        self.assertEqual(got.info_cache, NETWORK_INFO)
        self.assertEqual((got.host, got.vm_state), ("h1", "building"))

    @inlineCallbacks
    def test_apply_update_creates_a_missing_instance(self) -> Any:
        """A report for an instance the top does not have creates it (with
        its metadata) under the top's own id."""
        report = new_instance(uuid="child-made", id=4242, generation=2, cell_name="api!c1")
        applied = yield self.store.instance_apply_update(report)
        self.assertTrue(applied)
        got = yield self.store.instance_get_by_uuid("child-made")
        self.assertNotEqual(got.id, 4242)
        self.assertEqual((got.generation, got.cell_name), (2, "api!c1"))
        self.assertEqual(got.metadata, {"owner": "api"})

    @inlineCallbacks
    def test_apply_update_reaches_soft_deleted_rows(self) -> Any:
        """A late report for an instance the top already deleted is written
        to the deleted row, which stays deleted."""
        top = yield self.store.instance_create(new_instance(), generation=0)
        yield self.store.instance_destroy(top.uuid)
        report = Instance.from_dict({"uuid": top.uuid, "vm_state": "deleted", "generation": 9})
        applied = yield self.store.instance_apply_update(report)
        self.assertTrue(applied)
        got = yield self.store.instance_get_by_uuid(top.uuid, read_deleted="yes")
        self.assertTrue(got.deleted)
        self.assertEqual(got.vm_state, "deleted")

    @inlineCallbacks
    def test_apply_update_of_an_unknown_deleted_instance(self) -> Any:
        """A report of an instance deleted below, unknown at the top, is
        stored as deleted."""
        report = new_instance(uuid="gone-below", deleted=True, deleted_at=T0, generation=3)
        yield self.store.instance_apply_update(report)
        with self.assertRaises(InstanceNotFound):
            yield self.store.instance_get_by_uuid("gone-below")
        got = yield self.store.instance_get_by_uuid("gone-below", read_deleted="only")
        self.assertEqual((got.deleted, got.deleted_at), (True, T0))

    @inlineCallbacks
    def test_upsert_at_top(self) -> Any:
        """instance_upsert_at_top writes by uuid whatever the generations,
        creates when missing, and never uses the sender's row id."""
        made = yield self.store.instance_upsert_at_top(
            new_instance(uuid="u-up", id=777, generation=5, host="h1")
        )
        self.assertNotEqual(made.id, 777)
        self.assertEqual((made.host, made.generation), ("h1", 5))
        repaired = yield self.store.instance_upsert_at_top(
            Instance.from_dict({"uuid": "u-up", "id": 1, "host": "h2", "generation": 1})
        )
        self.assertEqual((repaired.id, repaired.host, repaired.generation), (made.id, "h2", 1))

    # -- destroy --------------------------------------------------------------------------

    @inlineCallbacks
    def test_destroy_soft_deletes(self) -> Any:
        """destroy marks the row deleted (deleted = id, deleted_at set) with
        its info cache and block device mappings; it is gone from normal
        reads, visible with read_deleted, and cannot be destroyed twice."""
        created = yield self.store.instance_create(new_instance(info_cache=NETWORK_INFO))
        yield self.store.bdm_create(
            BlockDeviceMapping(instance_uuid=created.uuid, device_name="/dev/vda")
        )
        gone = yield self.store.instance_destroy(created.uuid)
        self.assertTrue(gone.deleted)
        self.assertIsNotNone(gone.deleted_at)
        self.assertEqual(gone.generation, created.generation + 1)
        with self.assertRaises(InstanceNotFound):
            yield self.store.instance_get_by_uuid(created.uuid)
        only = yield self.store.instance_get_by_uuid(created.uuid, read_deleted="only")
        self.assertEqual(only.uuid, created.uuid)
        with self.assertRaises(InstanceNotFound):
            yield self.store.instance_destroy(created.uuid)
        bdms = yield self.store.bdm_get_all_by_instance(created.uuid)
        self.assertEqual(bdms, [])
        with self.assertRaises(InstanceInfoCacheNotFound):
            yield self.store.instance_info_cache_get(created.uuid)

    # -- info caches and faults --------------------------------------------------------------

    @inlineCallbacks
    def test_info_cache_update(self) -> Any:
        """Replacing network_info is a change of the instance (generation
        bumped); the cache reads back decoded."""
        created = yield self.store.instance_create(new_instance())
        self.assertEqual(created.info_cache, [])
        updated = yield self.store.instance_info_cache_update(created.uuid, NETWORK_INFO)
        self.assertEqual(updated.info_cache, NETWORK_INFO)
        self.assertEqual(updated.generation, created.generation + 1)
        cache = yield self.store.instance_info_cache_get(created.uuid)
        self.assertEqual(cache, NETWORK_INFO)
        with self.assertRaises(InstanceNotFound):
            yield self.store.instance_info_cache_update("nope", [])
        with self.assertRaises(InstanceInfoCacheNotFound):
            yield self.store.instance_info_cache_get("nope")

    @inlineCallbacks
    def test_faults(self) -> Any:
        """Faults are stored without the sender's id and listed per instance
        newest first; latest keeps only the newest; unknown uuids map to []."""
        first = yield self.store.instance_fault_create(
            {"id": 55, "instance_uuid": "i-1", "code": 500, "message": "one", "host": "h"}
        )
        self.assertNotEqual(first.id, 55)
        second = yield self.store.instance_fault_create(
            InstanceFault(instance_uuid="i-1", code=404, message="two", details="tb")
        )
        found = yield self.store.instance_fault_get_by_instance_uuids(["i-1", "i-2"])
        self.assertEqual([f.message for f in found["i-1"]], ["two", "one"])
        self.assertEqual(found["i-2"], [])
        self.assertEqual(found["i-1"][0], second)
        latest = yield self.store.instance_fault_get_by_instance_uuids(["i-1"], latest=True)
        self.assertEqual([f.message for f in latest["i-1"]], ["two"])


class SQLiteInstanceTests(SQLiteBackend, InstanceTests, TestCase):
    pass


class PostgresInstanceTests(PostgresBackend, InstanceTests, TestCase):
    pass
