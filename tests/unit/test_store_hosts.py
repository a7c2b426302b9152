"""The cell store's services, compute nodes, migrations and task logs, on
SQLite and PostgreSQL."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

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
from cellsd.objects import ComputeNode, Migration, Service, TaskLog
from tests.unit.test_store_support import PostgresBackend, SQLiteBackend, StoreCase

UTC = datetime.UTC
BEGIN = datetime.datetime(2024, 5, 1, tzinfo=UTC)
END = datetime.datetime(2024, 6, 1, tzinfo=UTC)


def compute(host: str, **kw: Any) -> Service:
    values: dict[str, Any] = {"binary": "nova-compute", "topic": "compute", **kw}
    return Service(host=host, **values)


def node(host: str, **kw: Any) -> ComputeNode:
    values: dict[str, Any] = {
        "host": host,
        "hypervisor_hostname": f"{host}.example.org",
        "hypervisor_type": "simulated",
        "vcpus": 8,
        "memory_mb": 16384,
        "local_gb": 100,
        "vcpus_used": 2,
        "memory_mb_used": 4096,
        "local_gb_used": 10,
        "free_ram_mb": 12288,
        "free_disk_gb": 90,
        "current_workload": 1,
        "running_vms": 2,
        "disk_available_least": 80,
    }
    values.update(kw)
    return ComputeNode(**values)


class HostTests(StoreCase):
    # -- services -----------------------------------------------------------------------

    @inlineCallbacks
    def test_service_create_and_lookups(self) -> Any:
        """A service is found by id, by host and binary, and (for
        nova-compute) by compute host; misses raise the typed errors."""
        svc = yield self.store.service_create(compute("h1", last_seen_up=BEGIN))
        self.assertIsInstance(svc.id, int)
        self.assertEqual(svc.last_seen_up, BEGIN)
        self.assertFalse(svc.disabled)
        got = yield self.store.service_get(svc.id)
        self.assertEqual(got, svc)
        got = yield self.store.service_get_by_host_and_binary("h1", "nova-compute")
        self.assertEqual(got, svc)
        got = yield self.store.service_get_by_compute_host("h1")
        self.assertEqual(got, svc)
        yield self.store.service_create(Service(host="h2", binary="nova-conductor"))
        with self.assertRaises(ComputeHostNotFound):
            yield self.store.service_get_by_compute_host("h2")
        with self.assertRaises(HostBinaryNotFound):
            yield self.store.service_get_by_host_and_binary("h1", "nova-network")
        with self.assertRaises(ServiceNotFound):
            yield self.store.service_get(12345)

    @inlineCallbacks
    def test_service_uniqueness(self) -> Any:
        """A host has one live service per binary and per topic."""
        yield self.store.service_create(compute("h1"))
        with self.assertRaises(ServiceBinaryExists):
            yield self.store.service_create(compute("h1", topic="other"))
        with self.assertRaises(ServiceTopicExists):
            yield self.store.service_create(Service(host="h1", binary="x", topic="compute"))

    @inlineCallbacks
    def test_service_get_all_disabled_filter(self) -> Any:
        """disabled None lists all, True only disabled, False only enabled."""
        a = yield self.store.service_create(compute("h1"))
        b = yield self.store.service_create(compute("h2", disabled=True, disabled_reason="x"))
        found = yield self.store.service_get_all()
        self.assertEqual([s.id for s in found], [a.id, b.id])
        found = yield self.store.service_get_all(disabled=True)
        self.assertEqual([s.id for s in found], [b.id])
        found = yield self.store.service_get_all(disabled=False)
        self.assertEqual([s.id for s in found], [a.id])

    @inlineCallbacks
    def test_service_update_and_destroy(self) -> Any:
        """update applies a dict (or a Service's changes); destroy soft-deletes
        the service and its compute nodes; the host may register again."""
        svc = yield self.store.service_create(compute("h1"))
        cn = yield self.store.compute_node_create(node("h1", service_id=svc.id))
        updated = yield self.store.service_update(
            svc.id, {"disabled": True, "disabled_reason": "maintenance"}
        )
        self.assertEqual((updated.disabled, updated.disabled_reason), (True, "maintenance"))
        change = updated.obj_clone()
        change.obj_reset_changes()
        change.report_count = 7
        updated = yield self.store.service_update(svc.id, change)
        self.assertEqual((updated.report_count, updated.disabled), (7, True))
        with self.assertRaises(ServiceNotFound):
            yield self.store.service_update(999, {"disabled": False})
        yield self.store.service_destroy(svc.id)
        with self.assertRaises(ServiceNotFound):
            yield self.store.service_get(svc.id)
        with self.assertRaises(ServiceNotFound):
            yield self.store.service_destroy(svc.id)
        with self.assertRaises(ComputeHostNotFound):
            yield self.store.compute_node_get(cn.id)
        again = yield self.store.service_create(compute("h1"))
        self.assertNotEqual(again.id, svc.id)

    # -- compute nodes ---------------------------------------------------------------------

    @inlineCallbacks
    def test_compute_node_crud(self) -> Any:
        """Create, get, list by host, update and delete a compute node; blobs
        (stats, supported_instances) read back decoded."""
        made = yield self.store.compute_node_create(
            node("h1", stats={"num_instances": "2"}, supported_instances=[["x86_64", "qemu"]])
        )
        got = yield self.store.compute_node_get(made.id)
        self.assertEqual(got, made)
        self.assertEqual(got.stats, {"num_instances": "2"})
        self.assertEqual(got.supported_instances, [["x86_64", "qemu"]])
        by_host = yield self.store.compute_node_get_all_by_host("h1")
        self.assertEqual(by_host, [made])
        updated = yield self.store.compute_node_update(made.id, {"vcpus_used": 4})
        self.assertEqual(updated.vcpus_used, 4)
        yield self.store.compute_node_delete(made.id)
        with self.assertRaises(ComputeHostNotFound):
            yield self.store.compute_node_get(made.id)
        with self.assertRaises(ComputeHostNotFound):
            yield self.store.compute_node_get_all_by_host("h1")
        with self.assertRaises(ComputeHostNotFound):
            yield self.store.compute_node_update(made.id, {"vcpus_used": 1})
        with self.assertRaises(ComputeHostNotFound):
            yield self.store.compute_node_delete(made.id)

    @inlineCallbacks
    def test_compute_node_hypervisor_match(self) -> Any:
        """hypervisor_match selects nodes whose hypervisor hostname contains
        it; LIKE wildcards in it are literal."""
        a = yield self.store.compute_node_create(node("alpha"))
        b = yield self.store.compute_node_create(node("beta"))
        c = yield self.store.compute_node_create(node("x", hypervisor_hostname="100%_x"))
        found = yield self.store.compute_node_get_all()
        self.assertEqual([n.id for n in found], [a.id, b.id, c.id])
        found = yield self.store.compute_node_get_all(hypervisor_match="eta.exa")
        self.assertEqual([n.id for n in found], [b.id])
        found = yield self.store.compute_node_get_all(hypervisor_match="%")
        self.assertEqual([n.id for n in found], [c.id])
        found = yield self.store.compute_node_get_all(hypervisor_match="a_p")
        self.assertEqual(found, [])

    @inlineCallbacks
    def test_compute_node_statistics(self) -> Any:
        """Totals cover the nodes of hosts with an enabled nova-compute
        service only; NULLs count as 0; no nodes gives zeros."""
        empty = yield self.store.compute_node_statistics()
        self.assertEqual(empty["count"], 0)
        self.assertEqual(empty["vcpus"], 0)
        yield self.store.service_create(compute("h1"))
        yield self.store.service_create(compute("h2"))
        yield self.store.service_create(compute("off", disabled=True))
        yield self.store.compute_node_create(node("h1"))
        yield self.store.compute_node_create(node("h2", disk_available_least=None))
        yield self.store.compute_node_create(node("off"))
        yield self.store.compute_node_create(node("no-service"))
        stats = yield self.store.compute_node_statistics()
        self.assertEqual(
            stats,
            {
                "count": 2,
                "vcpus": 16,
                "memory_mb": 32768,
                "local_gb": 200,
                "vcpus_used": 4,
                "memory_mb_used": 8192,
                "local_gb_used": 20,
                "free_ram_mb": 24576,
                "free_disk_gb": 180,
                "current_workload": 2,
                "running_vms": 4,
                "disk_available_least": 80,
            },
        )
        for value in stats.values():
            self.assertIs(type(value), int)

    # -- migrations --------------------------------------------------------------------------

    @inlineCallbacks
    def test_migration_crud(self) -> Any:
        """Create, get and update a migration; MigrationNotFound otherwise."""
        made = yield self.store.migration_create(
            Migration(
                source_compute="h1",
                dest_compute="h2",
                instance_uuid="i-1",
                status="pre-migrating",
                migration_type="resize",
                old_instance_type_id=1,
                new_instance_type_id=2,
            )
        )
        got = yield self.store.migration_get(made.id)
        self.assertEqual(got, made)
        updated = yield self.store.migration_update(made.id, {"status": "finished"})
        self.assertEqual(updated.status, "finished")
        with self.assertRaises(MigrationNotFound):
            yield self.store.migration_get(999)
        with self.assertRaises(MigrationNotFound):
            yield self.store.migration_update(999, {"status": "error"})

    @inlineCallbacks
    def test_migration_filters(self) -> Any:
        """Filters: status (one or several), host as source or destination,
        source_compute, migration_type, hidden; cell_name is ignored."""
        m1 = yield self.store.migration_create(
            Migration(
                source_compute="h1",
                dest_compute="h2",
                status="migrating",
                migration_type="live-migration",
            )
        )
        m2 = yield self.store.migration_create(
            Migration(
                source_compute="h2",
                dest_compute="h3",
                status="finished",
                migration_type="resize",
                hidden=True,
            )
        )
        m3 = yield self.store.migration_create(
            Migration(
                source_compute="h3", dest_compute="h1", status="error", migration_type="resize"
            )
        )

        @inlineCallbacks
        def ids(filters: dict[str, Any]) -> Any:
            found = yield self.store.migration_get_all_by_filters(filters)
            return [m.id for m in found]

        self.assertEqual((yield ids({})), [m1.id, m2.id, m3.id])
        self.assertEqual((yield ids({"status": "finished"})), [m2.id])
        self.assertEqual((yield ids({"status": ["error", "migrating"]})), [m1.id, m3.id])
        self.assertEqual((yield ids({"host": "h1"})), [m1.id, m3.id])
        self.assertEqual((yield ids({"source_compute": "h2"})), [m2.id])
        self.assertEqual((yield ids({"migration_type": "resize"})), [m2.id, m3.id])
        self.assertEqual((yield ids({"hidden": False})), [m1.id, m3.id])
        self.assertEqual((yield ids({"cell_name": "api!c1", "host": "h3"})), [m2.id, m3.id])

    # -- task logs ---------------------------------------------------------------------------

    @inlineCallbacks
    def test_task_log_get_all(self) -> Any:
        """task_log_get_all matches task name and period exactly, and host /
        state when given; periods may be ISO-8601 strings."""
        a = yield self.store.task_log_create(
            TaskLog(
                task_name="audit",
                state="DONE",
                host="h1",
                period_beginning=BEGIN,
                period_ending=END,
                message="ok",
                task_items=3,
            )
        )
        b = yield self.store.task_log_begin_task("audit", BEGIN, END, "h2", task_items=1)
        yield self.store.task_log_begin_task("audit", BEGIN, END + datetime.timedelta(1), "h1")
        yield self.store.task_log_begin_task("other", BEGIN, END, "h1")

        @inlineCallbacks
        def ids(*args: Any, **kw: Any) -> Any:
            found = yield self.store.task_log_get_all(*args, **kw)
            return [t.id for t in found]

        self.assertEqual((yield ids("audit", BEGIN, END)), [a.id, b.id])
        self.assertEqual((yield ids("audit", BEGIN.isoformat(), END.isoformat())), [a.id, b.id])
        self.assertEqual((yield ids("audit", BEGIN, END, host="h2")), [b.id])
        self.assertEqual((yield ids("audit", BEGIN, END, state="DONE")), [a.id])
        self.assertEqual((yield ids("audit", BEGIN, END, host="h2", state="DONE")), [])
        self.assertEqual(b.state, "RUNNING")

    @inlineCallbacks
    def test_task_log_begin_and_end(self) -> Any:
        """A task runs once per host and period (TaskAlreadyRunning); ending
        it records DONE and the errors; ending an unknown run fails."""
        yield self.store.task_log_begin_task("audit", BEGIN, END, "h1", message="start")
        with self.assertRaises(TaskAlreadyRunning):
            yield self.store.task_log_begin_task("audit", BEGIN, END, "h1")
        done = yield self.store.task_log_end_task("audit", BEGIN, END, "h1", errors=2, message="x")
        self.assertEqual((done.state, done.errors, done.message), ("DONE", 2, "x"))
        with self.assertRaises(TaskNotRunning):
            yield self.store.task_log_end_task("audit", BEGIN, END, "h9", errors=0)


class SQLiteHostTests(SQLiteBackend, HostTests, TestCase):
    pass


class PostgresHostTests(PostgresBackend, HostTests, TestCase):
    pass
