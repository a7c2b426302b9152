"""A daemon killed with SIGKILL with calls and updates in flight (issue 7,
item 6), between real ``cellsd run`` processes::

    api-cell
    └── mid-cell
        └── leaf-cell   (simulated hosts host1, host2)

The leaf reports every change up with the must-deliver ``*_at_top`` casts
(:mod:`cellsd.messaging.outbox`): each is written to the leaf's store before
its local API acknowledges it, and each hop holds it until the next one
confirms. Three kinds of report flow from the leaf while faults are injected:

* real state changes: stop and start actions sent to the leaf's own API on
  instances built there, each step reported by its compute;
* ``instance_update_at_top`` casts, with increasing generations, of
  instances only the top knows: anti-entropy leaves those alone, so only
  the outbox can bring them up;
* ``instance_fault_create_at_top`` casts with unique messages: only the
  message's uuid stops a resend from creating a fault twice.

Each cell's SQLite store is read directly (read-only) to compare the top's
copy of every instance with the leaf's and to see what waits in an outbox.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import shutil
import sqlite3
import tempfile
import time
import urllib.request
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from cellsd.cli.demo import free_port
from cellsd.client import connect
from cellsd.compute import states as st
from cellsd.context import RequestContext
from cellsd.errors import CellsError, CellUnreachable
from cellsd.objects import Flavor, Instance
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOP, MID, LEAF = "api-cell", "mid-cell", "leaf-cell"
TREE = {TOP: [MID], MID: [LEAF]}
MID_PATH = f"{TOP}!{MID}"
LEAF_PATH = f"{MID_PATH}!{LEAF}"
HOSTS = {
    LEAF: [
        {"name": "host1", "vcpus": 16, "memory_mb": 32768, "disk_gb": 500},
        {"name": "host2", "vcpus": 16, "memory_mb": 32768, "disk_gb": 500},
    ]
}
#: Small intervals: a killed neighbour is redialed within half a second.
#: The heal timer is long, so only reconnects run anti-entropy.
CELLS = {
    "call_timeout": 3.0,
    "reconnect_max_delay": 0.5,
    "health_down_after": 1.0,
    "health_up_after": 0.5,
    "update_interval": 120.0,
    "outbox_window": 8,
}
TINY = Flavor(id=1, flavorid="1", name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0)
#: No cast to the leaf's local API may take longer than this (no hang).
CAST_BOUND = 3.0
#: A call to a cell that is down fails within this (no waiting for a timeout).
FAST_FAILURE = 1.0
CONVERGE = 15.0


def utcnow() -> datetime.datetime:
    """Now, as the stores write it (UTC, naive)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def ctxt() -> RequestContext:
    return RequestContext(user_id="u1", project_id="p1", is_admin=True, roles=["admin"])


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class Reports:
    """Reports made through the leaf's local API until :meth:`stop`: what
    was acknowledged, what failed and how, and the slowest answer."""

    def __init__(self, api: Any, tag: str, owned: list[str], foreign: list[str]) -> None:
        self.api = api
        self.tag = tag
        self.owned = owned
        #: Instances only the top has: uuid -> (generation, vm_state) accepted.
        self.foreign: dict[str, tuple[int, str]] = dict.fromkeys(foreign, (0, st.ACTIVE))
        self.faults: list[str] = []
        self.actions = 0
        self.errors: list[str] = []
        self.slowest = 0.0
        self.running = True
        self._loops: list[Deferred[None]] = []

    async def timed(self, d: Deferred[Any]) -> bool:
        """Whether the cast was acknowledged; a typed error is recorded,
        anything else fails the test."""
        start = time.monotonic()
        try:
            await d
        except CellsError as e:
            self.errors.append(f"{type(e).__name__}: {e}")
            return False
        finally:
            self.slowest = max(self.slowest, time.monotonic() - start)
        return True

    def start(self, leaf_db: Callable[[str], dict[str, Any]]) -> None:
        loops = [self.updates(u) for u in self.foreign]
        loops.append(self.fault_reports())
        loops.extend(self.actions_on(u, leaf_db) for u in self.owned)
        self._loops = [Deferred.fromCoroutine(c) for c in loops]

    async def stop(self) -> None:
        self.running = False
        await defer.gatherResults(self._loops, consumeErrors=True)

    async def updates(self, uuid: str) -> None:
        generation = self.foreign[uuid][0]
        while self.running:
            generation += 1
            vm_state = st.ACTIVE if generation % 2 else st.STOPPED
            inst = Instance(
                uuid=uuid,
                user_id="u1",
                project_id="p-foreign",
                display_name=f"g{generation}",
                vm_state=vm_state,
                generation=generation,
            )
            if await self.timed(self.api.instance_update_at_top(ctxt(), inst)):
                self.foreign[uuid] = (generation, vm_state)
            await sleep(0.01)

    async def fault_reports(self) -> None:
        n = 0
        while self.running:
            n += 1
            message = f"{self.tag}-{n}"
            fault = {"instance_uuid": self.owned[0], "code": 500, "message": message}
            if await self.timed(self.api.instance_fault_create_at_top(ctxt(), fault)):
                self.faults.append(message)
            await sleep(0.01)

    async def actions_on(self, uuid: str, leaf_db: Callable[[str], dict[str, Any]]) -> None:
        """Stop, start, stop … each once the previous one finished (the
        casts are acknowledged on receipt: the leaf's store says when)."""
        while self.running:
            row = leaf_db(uuid)
            if row["task_state"] is not None:
                await sleep(0.02)
                continue
            inst = {"uuid": uuid, "cell_name": LEAF, "host": row["host"]}
            if row["vm_state"] == st.ACTIVE:
                sent = self.api.stop_instance(ctxt(), inst)
            else:
                sent = self.api.start_instance(ctxt(), inst)
            if not await self.timed(sent):
                continue
            self.actions += 1
            end = time.monotonic() + CAST_BOUND
            while leaf_db(uuid)["generation"] == row["generation"] and time.monotonic() < end:
                await sleep(0.02)


class KilledWithUpdatesInFlight(TestCase):
    timeout = 90
    cluster: ClassVar[Cluster]
    base: ClassVar[Path]
    status_port: ClassVar[int]

    @classmethod
    def setUpClass(cls) -> None:
        cls.base = Path(tempfile.mkdtemp(prefix="kd", dir="/tmp"))
        try:
            cls.cluster = Cluster(cls.base, TREE, {"cells": CELLS}, HOSTS)
            # The top's status page says how many resends it dropped.
            cls.status_port = free_port()
            config = cls.cluster.cells[TOP].config
            listen = f'[metrics]\nlisten = "tcp:{cls.status_port}:interface=127.0.0.1"\n'
            config.write_text(config.read_text() + "\n" + listen)
            since = utcnow()
            cls.cluster.start_all()
            for cell, child in ((TOP, MID), (MID, LEAF)):
                cls.cluster.wait_for_log(cell, f"link to child {child} is up", timeout=30)
            deadline = time.monotonic() + 30
            while not cls.compute_started(since):
                assert time.monotonic() < deadline, cls.cluster.logs()
                time.sleep(0.1)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        if getattr(cls, "cluster", None) is not None:
            cls.cluster.stop_all()
        shutil.rmtree(cls.base, ignore_errors=True)

    async def api(self, cell: str) -> Any:
        api = await connect(reactor, self.cluster.endpoint(cell), call_timeout=CAST_BOUND)
        self.addCleanup(api.transport.close)
        return api

    # -- the cells' databases, read directly --------------------------------------

    @classmethod
    def compute_started(cls, since: datetime.datetime) -> bool:
        """Whether the leaf's compute, started after ``since``, has finished
        starting (each host heartbeated). Until then its start-up clears
        the tasks a restart interrupted, and a build that arrived meanwhile
        is cleared with them and ends in ERROR (a known race of the compute
        layer's start-up), so nothing is built before."""
        path = cls.base / "var" / LEAF / "cell.sqlite"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                rows = conn.execute("SELECT last_seen_up FROM services").fetchall()
        except sqlite3.OperationalError:
            return False
        seen = [datetime.datetime.fromisoformat(r[0]) for r in rows if r[0]]
        return len(seen) == len(HOSTS[LEAF]) and min(seen) >= since

    def query(self, cell: str, sql: str, *args: Any) -> list[sqlite3.Row]:
        path = self.base / "var" / cell / "cell.sqlite"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def instance(self, cell: str, uuid: str) -> dict[str, Any]:
        rows = self.query(cell, "SELECT * FROM instances WHERE uuid = ?", uuid)
        assert rows, f"{uuid} is not in {cell}'s store"
        return dict(rows[0])

    async def top_outbox(self) -> dict[str, Any]:
        """The top's outbox counters, from its status page."""
        url = f"http://127.0.0.1:{self.status_port}/status.json"

        def fetch() -> dict[str, Any]:
            with urllib.request.urlopen(url, timeout=10) as answer:
                status: dict[str, Any] = json.load(answer)
            return dict(status["outbox"])

        return await threads.deferToThread(fetch)

    def waiting(self, cell: str) -> int:
        """Messages in the cell's outbox (not yet confirmed by its parent)."""
        return int(self.query(cell, "SELECT count(*) FROM outbox")[0][0])

    def faults_at_top(self, tag: str) -> collections.Counter[str]:
        rows = self.query(
            TOP, "SELECT message FROM instance_faults WHERE message LIKE ?", f"{tag}-%"
        )
        return collections.Counter(r[0] for r in rows)

    async def eventually(self, check: Callable[[], T], deadline: float = CONVERGE) -> T:
        """``check()`` until it stops raising AssertionError (the cells'
        logs are added to the last one)."""
        end = time.monotonic() + deadline
        while True:
            try:
                return check()
            except (AssertionError, sqlite3.OperationalError) as e:
                # (a store still being created after a restart is not ready)
                if time.monotonic() > end:
                    raise AssertionError(f"{e}\n{self.cluster.logs()}") from e
                await sleep(0.1)

    def converged(self, reports: Reports) -> None:
        """Nothing waits in an outbox; the top's copy of every instance is
        the leaf's (or the last accepted report's); each accepted fault is
        at the top exactly once."""
        assert (self.waiting(LEAF), self.waiting(MID)) == (0, 0)
        for uuid in reports.owned:
            own, top = self.instance(LEAF, uuid), self.instance(TOP, uuid)
            fields = ("vm_state", "task_state", "host", "generation")
            assert [top[f] for f in fields] == [own[f] for f in fields], (uuid, top, own)
            assert top["cell_name"] == LEAF_PATH, top["cell_name"]
        for uuid, (generation, vm_state) in reports.foreign.items():
            top = self.instance(TOP, uuid)
            assert (top["generation"], top["vm_state"]) == (generation, vm_state), (uuid, top)
        found = self.faults_at_top(reports.tag)
        assert found == collections.Counter(reports.faults), (
            sorted(set(found) ^ set(reports.faults)),
            [m for m, n in found.items() if n > 1],
        )

    async def build(self, api: Any, count: int) -> list[str]:
        """``count`` instances built in the leaf from the top, active there."""
        uuids = [str(uuidlib.uuid4()) for _ in range(count)]
        for uuid in uuids:
            inst = {"uuid": uuid, "user_id": "u1", "project_id": "p1", "flavor": TINY}
            await api.build_instances(
                ctxt(),
                instances=[inst],
                image={"id": "img-1"},
                filter_properties={
                    "instance_type": TINY,
                    "scheduler_hints": {"target_cell": LEAF_PATH},
                },
                admin_password=None,
                injected_files=[],
                requested_networks=None,
                security_groups=["default"],
                block_device_mapping=[],
                legacy_bdm=False,
            )

        def active() -> None:
            for uuid in uuids:
                own = self.instance(LEAF, uuid)
                assert (own["vm_state"], own["task_state"]) == (st.ACTIVE, None), own
                assert self.instance(TOP, uuid)["vm_state"] == st.ACTIVE

        await self.eventually(active)
        return uuids

    # -- scenarios ---------------------------------------------------------------------

    async def test_middle_cell_killed_while_reports_flow(self) -> None:
        """Injected: while the leaf reports state changes, faults and
        foreign updates, the top is stalled (SIGSTOP) for a second so that
        the middle cell's outbox fills; the top resumes and at once the
        middle cell is stalled, so that the top applies what it had been
        sent but its confirmations are not read; the middle cell is then
        killed with SIGKILL, holding those messages; the leaf keeps
        reporting while it is down; it is restarted on its state directory.

        Seen: the leaf's local API acknowledges every report throughout,
        none slower than the bound; while the middle cell is down a call
        from the top to it or through it fails at once with CellUnreachable;
        afterwards the top converges to exactly the leaf's state for every
        instance, each foreign instance at its last accepted generation,
        and each accepted fault exactly once, although the restarted middle
        cell sent again messages the top had applied (the top counts them
        as duplicates)."""
        cluster = self.cluster
        top_api, leaf_api = await self.api(TOP), await self.api(LEAF)
        owned = await self.build(top_api, 3)
        duplicates = (await self.top_outbox())["duplicates"]
        foreign = [str(uuidlib.uuid4()) for _ in range(2)]
        reports = Reports(leaf_api, "mid-kill", owned, foreign)
        reports.start(lambda uuid: self.instance(LEAF, uuid))
        try:
            await sleep(1.0)
            cluster.pause(TOP)
            await sleep(1.0)
            cluster.resume(TOP)
            cluster.pause(MID)
            await sleep(0.5)
            cluster.kill(MID)
            held = self.waiting(MID)
            await sleep(0.3)
            # The top's link to mid-cell is gone: no waiting for a deadline.
            for call in (
                lambda: top_api.instance_list(ctxt(), cell_name=MID_PATH),
                lambda: top_api.instance_list(ctxt(), cell_name=LEAF_PATH),
            ):
                start = time.monotonic()
                with self.assertRaises(CellUnreachable) as caught:
                    await call()
                self.assertLess(time.monotonic() - start, FAST_FAILURE)
                self.assertIn(MID, str(caught.exception))
            row = await top_api.ping(ctxt(), MID_PATH)
            self.assertFalse(row["ok"])
            self.assertTrue(row["error"].startswith("CellUnreachable"), row)
            before = (len(reports.faults), reports.actions)
            await sleep(1.5)
            stranded = self.waiting(LEAF)
            during = (len(reports.faults) - before[0], reports.actions - before[1])
            cluster.start(MID)
            await sleep(1.5)
        finally:
            await reports.stop()
        self.assertGreater(held, 0, "mid-cell held nothing in its outbox when killed")
        self.assertGreater(stranded, 0, "nothing waited at the leaf while mid-cell was down")
        self.assertGreater(during[0], 0, "no fault was accepted while mid-cell was down")
        self.assertGreater(during[1], 0, "no action ran while mid-cell was down")
        self.assertEqual(reports.errors, [])
        self.assertLess(reports.slowest, CAST_BOUND)
        await self.eventually(lambda: self.converged(reports))
        self.assertGreater((await self.top_outbox())["duplicates"], duplicates)

    async def test_leaf_killed_right_after_its_api_accepted_reports(self) -> None:
        """Injected: the middle cell is stalled (SIGSTOP) so nothing the
        leaf sends is confirmed; the leaf's local API acknowledges a batch
        of instance updates and faults; the leaf is killed with SIGKILL at
        once, the middle cell resumed and the leaf restarted.

        Seen: the killed leaf's store still held every acknowledged report;
        after the restart each reaches the top: the foreign instances at
        the last generation, each fault exactly once (those the stalled
        middle cell read before the kill are dropped as resends)."""
        cluster = self.cluster
        top_api = await self.api(TOP)
        owned = await self.build(top_api, 1)
        leaf_api = await self.api(LEAF)
        reports = Reports(leaf_api, "leaf-kill", owned, [str(uuidlib.uuid4()) for _ in range(2)])
        cluster.pause(MID)
        try:
            for uuid in list(reports.foreign):
                for _ in range(10):
                    generation = reports.foreign[uuid][0] + 1
                    inst = Instance(
                        uuid=uuid,
                        user_id="u1",
                        project_id="p-foreign",
                        vm_state=st.ACTIVE,
                        display_name=f"g{generation}",
                        generation=generation,
                    )
                    self.assertTrue(
                        await reports.timed(leaf_api.instance_update_at_top(ctxt(), inst))
                    )
                    reports.foreign[uuid] = (generation, st.ACTIVE)
            for n in range(10):
                message = f"leaf-kill-{n}"
                fault = {"instance_uuid": owned[0], "code": 500, "message": message}
                self.assertTrue(
                    await reports.timed(leaf_api.instance_fault_create_at_top(ctxt(), fault))
                )
                reports.faults.append(message)
            cluster.kill(LEAF)
        finally:
            cluster.resume(MID)
        faults = "SELECT count(*) FROM outbox WHERE method = 'instance_fault_create_at_top'"
        self.assertEqual(self.query(LEAF, faults)[0][0], 10)
        self.assertGreaterEqual(self.waiting(LEAF), 30)
        self.assertLess(reports.slowest, CAST_BOUND)
        since = utcnow()
        cluster.start(LEAF)
        reports.owned = []  # no actions here; the leaf's instance is unchanged
        await self.eventually(lambda: self.converged(reports))
        await self.eventually(lambda: self.assertTrue(self.compute_started(since)))
