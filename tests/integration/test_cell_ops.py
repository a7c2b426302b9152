"""Every seed message doing its real work between real ``cellsd run``
processes, each cell with its SQLite store::

    api-cell
    ├── child-cell1
    │   └── grandchild-cell1   (simulated hosts host1, host2)
    └── child-cell2            (simulated hosts host1, host2)

The tests talk to api-cell as an API service would, through
``cellsd.client.connect`` and the CellsAPI, and read each cell's database
directly (read-only) to compare the top's copy of an instance with the
owning cell's. The tree is started once for the class.
"""

from __future__ import annotations

import datetime
import functools
import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from twisted.internet import reactor, task, threads
from twisted.trial.unittest import TestCase

from cellsd.client import connect
from cellsd.context import RequestContext
from cellsd.errors import InstanceInvalidState
from cellsd.objects import Flavor
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration

T = TypeVar("T")

TREE = {"api-cell": ["child-cell1", "child-cell2"], "child-cell1": ["grandchild-cell1"]}
LEAVES = ("grandchild-cell1", "child-cell2")
GC1 = "api-cell!child-cell1!grandchild-cell1"
C2 = "api-cell!child-cell2"
HOSTS = """[[compute.hosts]]
name = "host1"
vcpus = 8
memory_mb = 16384
disk_gb = 200

[[compute.hosts]]
name = "host2"
vcpus = 8
memory_mb = 16384
disk_gb = 200
"""
TINY = Flavor(id=1, flavorid="1", name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0)
SMALL = Flavor(
    id=2, flavorid="2", name="m1.small", memory_mb=2048, vcpus=1, root_gb=20, ephemeral_gb=0
)
#: Compared between the top's copy and the owner's after every action.
COMPARED = ("vm_state", "task_state", "host", "flavor_id")
DEADLINE = 15.0


def ctxt() -> RequestContext:
    return RequestContext(user_id="u1", project_id="p1", is_admin=True, roles=["admin"])


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class CellOpsTests(TestCase):
    timeout = 120
    cluster: ClassVar[Cluster]
    base: ClassVar[Path]

    @classmethod
    def setUpClass(cls) -> None:
        cls.base = Path(tempfile.mkdtemp(prefix="co", dir="/tmp"))
        try:
            cls.cluster = Cluster(cls.base, TREE, {"cells": {"call_timeout": 10}})
            for leaf in LEAVES:
                path = cls.cluster.cells[leaf].config
                text = path.read_text()
                assert "[compute]\nhosts = []\n" in text, text
                path.write_text(text.replace("[compute]\nhosts = []\n", HOSTS))
            cls.cluster.start_all()
            # Cheap first: the links in the logs; then one real round trip.
            for cell, child in (
                ("api-cell", "child-cell1"),
                ("api-cell", "child-cell2"),
                ("child-cell1", "grandchild-cell1"),
            ):
                cls.cluster.wait_for_log(cell, f"link to child {child} is up", timeout=30)
            cls.cluster.wait_until_tree_answers("api-cell", 4)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        if getattr(cls, "cluster", None) is not None:
            cls.cluster.stop_all()
        shutil.rmtree(cls.base, ignore_errors=True)

    async def api(self) -> Any:
        api = await connect(reactor, self.cluster.endpoint("api-cell"), call_timeout=20)
        self.addCleanup(api.transport.close)
        return api

    # -- the cells' databases, read directly ------------------------------------

    def db(self, cell: str) -> sqlite3.Connection:
        path = self.base / "var" / cell / "cell.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def row(self, cell: str, uuid: str) -> dict[str, Any] | None:
        with self.db(cell) as conn:
            found = conn.execute("SELECT * FROM instances WHERE uuid = ?", (uuid,)).fetchone()
        if found is None:
            return None
        row = dict(found)
        row["flavor_id"] = json.loads(row["flavor"])["flavorid"] if row["flavor"] else None
        return row

    async def eventually(self, check: Callable[[], T], deadline: float = DEADLINE) -> T:
        """``check()`` until it stops raising AssertionError."""
        end = time.monotonic() + deadline
        while True:
            try:
                return check()
            except AssertionError:
                if time.monotonic() > end:
                    raise
                await sleep(0.05)

    def same(self, uuid: str, owner: str, path: str, vm_state: str) -> dict[str, Any]:
        """The top's copy equals the owner's (vm_state, task_state, host,
        flavor) and names the owner's path; the owner is at rest in
        ``vm_state``."""
        own, top = self.row(owner, uuid), self.row("api-cell", uuid)
        assert own is not None and top is not None, (own, top)
        assert (own["vm_state"], own["task_state"]) == (vm_state, None), own
        assert [top[f] for f in COMPARED] == [own[f] for f in COMPARED], (top, own)
        assert top["cell_name"] == path, top["cell_name"]
        return top

    async def build(self, api: Any, path: str, owner: str) -> dict[str, Any]:
        uuid = str(uuidlib.uuid4())
        inst = {
            "uuid": uuid,
            "user_id": "u1",
            "project_id": "p1",
            "display_name": f"vm-{owner}",
            "image_ref": "img-1",
            "flavor": TINY,
        }
        await api.build_instances(
            ctxt(),
            instances=[inst],
            image={"id": "img-1"},
            filter_properties={"instance_type": TINY, "scheduler_hints": {"target_cell": path}},
            admin_password=None,
            injected_files=[],
            requested_networks=None,
            security_groups=["default"],
            block_device_mapping=[],
            legacy_bdm=False,
        )
        return await self.eventually(lambda: self.same(uuid, owner, path, "active"))

    def finished(self, cell: str, uuid: str, c: RequestContext) -> None:
        """The action of request ``c`` on the instance has finished there."""
        with self.db(cell) as conn:
            row = conn.execute(
                "SELECT finish_time FROM instance_actions WHERE instance_uuid = ?"
                " AND request_id = ?",
                (uuid, c.request_id),
            ).fetchone()
        assert row is not None and row[0] is not None, (uuid, c.request_id, row)

    def instance_arg(self, uuid: str) -> dict[str, Any]:
        """The top's copy, as an API service sends an instance."""
        row = self.row("api-cell", uuid)
        assert row is not None
        return {"uuid": uuid, "cell_name": row["cell_name"], "host": row["host"]}

    # -- tests ---------------------------------------------------------------------

    async def test_lifecycle_of_an_instance_in_a_grandchild(self) -> None:
        """An instance built in grandchild-cell1; every lifecycle action of
        the seed sent from the top; after each the top's copy matches the
        owner's within the deadline; actions in the wrong state come back
        as InstanceInvalidState."""
        api = await self.api()
        top = await self.build(api, GC1, "grandchild-cell1")
        uuid = top["uuid"]

        def elsewhere(inst: dict[str, Any]) -> str:
            return f"{GC1}@" + ("host1" if inst["host"] == "host2" else "host2")

        steps: list[tuple[str, Callable[[Any, Any], Awaitable[Any]], str]] = [
            ("stop", lambda c, i: api.stop_instance(c, i), "stopped"),
            ("start", lambda c, i: api.start_instance(c, i), "active"),
            ("reboot soft", lambda c, i: api.reboot_instance(c, i, None, "SOFT"), "active"),
            ("reboot hard", lambda c, i: api.reboot_instance(c, i, None, "HARD"), "active"),
            ("pause", lambda c, i: api.pause_instance(c, i), "paused"),
            ("unpause", lambda c, i: api.unpause_instance(c, i), "active"),
            ("suspend", lambda c, i: api.suspend_instance(c, i), "suspended"),
            ("resume", lambda c, i: api.resume_instance(c, i), "active"),
            ("snapshot", lambda c, i: api.snapshot_instance(c, i, "snap-1"), "active"),
            ("backup", lambda c, i: api.backup_instance(c, i, "bak-1", "daily", 2), "active"),
            ("password", lambda c, i: api.set_admin_password(c, i, "secret"), "active"),
            ("reset network", lambda c, i: api.reset_network(c, i), "active"),
            ("inject network", lambda c, i: api.inject_network_info(c, i), "active"),
            (
                "rebuild",
                lambda c, i: api.rebuild_instance(
                    c, i, "pw", [], "img-2", "img-1", {}, [], preserve_ephemeral=True
                ),
                "active",
            ),
            ("resize", lambda c, i: api.resize_instance(c, i, {}, None, SMALL, None), "resized"),
            ("revert", lambda c, i: api.revert_resize(c, i, None, None, None), "active"),
            ("resize", lambda c, i: api.resize_instance(c, i, {}, None, SMALL, None), "resized"),
            ("confirm", lambda c, i: api.confirm_resize(c, i, None, None, None), "active"),
            (
                "live migrate",
                lambda c, i: api.live_migrate_instance(c, i, elsewhere(i), False, False),
                "active",
            ),
            ("soft delete", lambda c, i: api.soft_delete_instance(c, i), "soft-delete"),
        ]
        for name, action, vm_state in steps:
            c, before = ctxt(), self.instance_arg(uuid)
            await action(c, before)
            await self.eventually(functools.partial(self.finished, "grandchild-cell1", uuid, c))
            copy = await self.eventually(
                functools.partial(self.same, uuid, "grandchild-cell1", GC1, vm_state)
            )
            if name == "resize":
                self.assertEqual(copy["flavor_id"], "2")
            if name == "live migrate":
                self.assertEqual(f"{GC1}@{copy['host']}", elsewhere(before))
        # Wrong state: a stop that waits, and a called compute API method.
        with self.assertRaises(InstanceInvalidState):
            await api.stop_instance(ctxt(), self.instance_arg(uuid), do_cast=False)
        with self.assertRaises(InstanceInvalidState):
            await api.call_compute_api_method(ctxt(), GC1, "pause", uuid)
        actions = await api.actions_get(ctxt(), self.instance_arg(uuid))
        self.assertEqual(actions[-1]["action"], "create")
        self.assertEqual(len(actions), 1 + len(steps))
        await api.terminate_instance(ctxt(), self.instance_arg(uuid), [])

        def deleted() -> None:
            own, top = self.row("grandchild-cell1", uuid), self.row("api-cell", uuid)
            assert own is not None and own["deleted"] and own["vm_state"] == "deleted", own
            assert top is not None and top["deleted"] and top["vm_state"] == "deleted", top

        await self.eventually(deleted)

    async def test_broadcast_queries_are_the_union_of_every_cell(self) -> None:
        """Services, compute nodes (with and without hypervisor_match),
        compute node stats, migrations, task logs and instance actions come
        from every cell, each row naming its cell."""
        api = await self.api()
        a = await self.build(api, GC1, "grandchild-cell1")
        b = await self.build(api, C2, "child-cell2")
        services = await api.service_get_all(ctxt())
        self.assertEqual(
            sorted(s["host"] for s in services),
            sorted([f"{C2}@host1", f"{C2}@host2", f"{GC1}@host1", f"{GC1}@host2"]),
        )
        self.assertEqual({s["cell_proxy.cell_path"] for s in services}, {GC1, C2})
        nodes = await api.compute_node_get_all(ctxt())
        self.assertEqual(len(nodes), 4)
        self.assertEqual({n["cell_proxy.cell_path"] for n in nodes}, {GC1, C2})
        matched = await api.compute_node_get_all(ctxt(), hypervisor_match="grandchild-cell1-")
        self.assertEqual(sorted(n["hypervisor_hostname"] for n in matched),
                         ["grandchild-cell1-host1", "grandchild-cell1-host2"])  # fmt: skip
        stats = await api.compute_node_stats(ctxt())
        self.assertEqual(stats["count"], 4)
        self.assertGreaterEqual(stats["running_vms"], 2)
        for inst in (a, b):
            await api.resize_instance(
                ctxt(), self.instance_arg(inst["uuid"]), {}, None, SMALL, None
            )
        await self.eventually(
            functools.partial(self.same, a["uuid"], "grandchild-cell1", GC1, "resized")
        )
        await self.eventually(functools.partial(self.same, b["uuid"], "child-cell2", C2, "resized"))
        migrations = await api.get_migrations(ctxt(), {"status": "finished"})
        mine = {
            m.instance_uuid: m.cell_name
            for m in migrations
            if m.instance_uuid in (a["uuid"], b["uuid"])
        }
        # the union of every cell, each row with its cell's path
        self.assertEqual(mine, {a["uuid"]: GC1, b["uuid"]: C2})
        only = await api.get_migrations(ctxt(), {"cell_name": "child-cell2", "status": "finished"})
        self.assertIn(b["uuid"], {m.instance_uuid for m in only})
        self.assertNotIn(a["uuid"], {m.instance_uuid for m in only})
        logs = await self.task_logs(api)
        self.assertEqual(
            sorted(t["host"] for t in logs),
            sorted([f"{C2}@host1", f"{C2}@host2", f"{GC1}@host1", f"{GC1}@host2"]),
        )
        actions = await api.actions_get(ctxt(), self.instance_arg(b["uuid"]))
        self.assertEqual([x["action"] for x in actions], ["resize", "create"])

    async def task_logs(self, api: Any) -> list[Any]:
        """The usage audit of the last whole hour, in every cell (asked
        again if the hour turned meanwhile)."""
        for _ in range(2):
            end = datetime.datetime.now(datetime.UTC).replace(minute=0, second=0, microsecond=0)
            begin = end - datetime.timedelta(hours=1)
            logs: list[Any] = await api.task_log_get_all(
                ctxt(), "instance_usage_audit", begin.isoformat(), end.isoformat()
            )
            if logs:
                return logs
            await sleep(11)  # a heartbeat (10 s) records the new hour
        return []

    async def test_sync_instances_repairs_a_corrupted_top_copy(self) -> None:
        """The top's copy changed by hand (states, host, cell) is repaired
        by one sync_instances from the top."""
        api = await self.api()
        a = await self.build(api, C2, "child-cell2")
        path = self.base / "var" / "api-cell" / "cell.sqlite"
        with sqlite3.connect(path, timeout=10) as conn:
            conn.execute(
                "UPDATE instances SET vm_state = 'error', task_state = 'deleting', host = 'bogus',"
                " cell_name = 'api-cell!child-cell1' WHERE uuid = ?",
                (a["uuid"],),
            )
        bad = self.row("api-cell", a["uuid"])
        assert bad is not None
        self.assertEqual(bad["vm_state"], "error")
        await api.sync_instances(ctxt())
        await self.eventually(lambda: self.same(a["uuid"], "child-cell2", C2, "active"))

    def cellsctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.cellsctl("api-cell", *args)

    async def test_cellsctl_lists_the_tops_view(self) -> None:
        """``cellsctl services --json`` lists every cell's services with
        their cell's path; ``cellsctl instances --json`` the top's copy of
        each instance with its fields."""
        api = await self.api()
        a = await self.build(api, GC1, "grandchild-cell1")
        result = await threads.deferToThread(self.cellsctl, "services", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        services = json.loads(result.stdout)
        expected = {(GC1, "host1"), (GC1, "host2"), (C2, "host1"), (C2, "host2")}
        self.assertEqual({(s["cell_name"], s["host"]) for s in services}, expected)
        result = await threads.deferToThread(self.cellsctl, "instances", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        rows = {r["uuid"]: r for r in json.loads(result.stdout)}
        row = rows[a["uuid"]]
        for field in ("vm_state", "task_state", "host", "cell_name", "project_id", "user_id"):
            self.assertEqual(row[field], a[field], field)
        self.assertEqual(row["flavor"]["flavorid"], "1")
