"""The soak's load (bench/soak.py): casts and actions sent to each leaf's
local API, calls from the top, and the ledger of how each one ended."""

from __future__ import annotations

import collections
import datetime
import random
import time
import uuid as uuidlib
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from bench.soak_cells import TOP, SoakCells
from cellsd.client import connect
from cellsd.compute import states as st
from cellsd.context import RequestContext
from cellsd.errors import CallTimeout, CellsError, NotConnected
from cellsd.objects import Instance
from cellsd.rpc.api import CellsAPI

#: Top-only instances each leaf reports.
FOREIGN = 2
#: A cast or call that takes longer than this counts as hung (a stall lasts
#: at most 2.5 s).
CALL_BOUND = 10.0


def ctxt() -> RequestContext:
    return RequestContext(user_id="u1", project_id="p1", is_admin=True, roles=["admin"])


def error_name(e: Exception) -> str:
    """The class name of a typed error (a rebuilt remote one without its
    ``_Remote`` suffix)."""
    return type(e).__name__.removesuffix("_Remote")


def utcnow() -> datetime.datetime:
    """Now, as the stores write it (UTC, naive)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class Ledger:
    """What the load sent and how each cast or call ended."""

    def __init__(self) -> None:
        #: Accepted faults: message -> when accepted (UTC, naive).
        self.faults: dict[str, datetime.datetime] = {}
        self.unknown_faults: set[str] = set()
        #: Top-only instance -> (generation, vm_state) last accepted.
        self.foreign: dict[str, tuple[int, str]] = {}
        self.generations: dict[str, int] = {}
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.top_rows: collections.Counter[str] = collections.Counter()
        self.actions = 0
        self.slowest = 0.0
        self.top_slowest = 0.0
        self.injected: collections.Counter[str] = collections.Counter()
        self.timeline: list[str] = []
        #: Every must-deliver message applied at the top during the load
        #: (the leaves' compute reports and anti-entropy included).
        self.applied_at_top = 0

    def accepted_reports(self) -> int:
        return self.outcomes["update accepted"] + self.outcomes["fault accepted"]


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class LeafLoad:
    """The casts and actions sent to one leaf's local API."""

    def __init__(
        self,
        reactor: Any,
        cells: SoakCells,
        name: str,
        owned: list[str],
        ledger: Ledger,
        pause: float,
    ) -> None:
        self.reactor, self.cells, self.name, self.ledger = reactor, cells, name, ledger
        self.owned = owned
        self.foreign = [str(uuidlib.uuid4()) for _ in range(FOREIGN)]
        for uuid in self.foreign:
            ledger.generations[uuid] = 0
        self.pause = pause
        self.running = True
        self.api: CellsAPI | None = None
        self.faults = 0

    async def client(self) -> CellsAPI | None:
        if self.api is None:
            try:
                self.api = await connect(
                    self.reactor,
                    self.cells.files[self.name].api,
                    call_timeout=CALL_BOUND,
                    connect_timeout=2.0,
                )
            except NotConnected:
                return None
        return self.api

    def drop(self) -> None:
        if self.api is not None:
            self.api.transport.close()
            self.api = None

    async def cast(self, kind: str, method: str, *args: Any) -> str:
        """CellsAPI ``method(ctxt, *args)``: accepted, refused, unknown or
        not sent (the leaf is down)."""
        api = await self.client()
        if api is None:
            self.ledger.outcomes[f"{kind} not sent"] += 1
            await sleep(self.reactor, 0.2)
            return "not sent"
        start = time.monotonic()
        d: Deferred[Any] = getattr(api, method)(ctxt(), *args)
        d.addTimeout(CALL_BOUND, self.reactor)
        try:
            await d
            outcome = "accepted"
        except (NotConnected, CallTimeout, defer.TimeoutError):
            self.drop()
            outcome = "unknown"
        except CellsError as e:
            outcome = f"refused ({error_name(e)})"
        finally:
            self.ledger.slowest = max(self.ledger.slowest, time.monotonic() - start)
        self.ledger.outcomes[f"{kind} {outcome}"] += 1
        return outcome

    def start(self) -> list[Deferred[None]]:
        loops = [self.updates(u) for u in self.foreign]
        loops.append(self.fault_reports())
        loops.extend(self.actions_on(u) for u in self.owned)
        return [Deferred.fromCoroutine(c) for c in loops]

    async def update(self, uuid: str) -> str:
        generation = self.ledger.generations[uuid] = self.ledger.generations[uuid] + 1
        vm_state = st.ACTIVE if generation % 2 else st.STOPPED
        inst = Instance(
            uuid=uuid,
            user_id="u1",
            project_id="p-top-only",
            display_name=f"{self.name}-g{generation}",
            vm_state=vm_state,
            generation=generation,
        )
        outcome = await self.cast("update", "instance_update_at_top", inst)
        if outcome == "accepted":
            self.ledger.foreign[uuid] = (generation, vm_state)
        return outcome

    async def updates(self, uuid: str) -> None:
        while self.running:
            await self.update(uuid)
            await sleep(self.reactor, self.pause)

    async def fault_reports(self) -> None:
        while self.running:
            self.faults += 1
            message = f"soak-{self.name}-{self.faults}"
            fault = {"instance_uuid": self.owned[0], "code": 500, "message": message}
            outcome = await self.cast("fault", "instance_fault_create_at_top", fault)
            if outcome == "accepted":
                self.ledger.faults[message] = utcnow()
            elif outcome == "unknown":
                self.ledger.unknown_faults.add(message)
            await sleep(self.reactor, self.pause)

    def row(self, uuid: str) -> dict[str, Any]:
        return dict(self.cells.query(self.name, "SELECT * FROM instances WHERE uuid = ?", uuid)[0])

    async def actions_on(self, uuid: str) -> None:
        """Stop, start, stop … each once the previous one finished."""
        while self.running:
            try:
                row = self.row(uuid)
            except Exception:
                await sleep(self.reactor, 0.2)  # the store is being opened
                continue
            if row["task_state"] is not None:
                await sleep(self.reactor, 0.05)
                continue
            inst = {"uuid": uuid, "cell_name": self.name, "host": row["host"]}
            action = "stop_instance" if row["vm_state"] == st.ACTIVE else "start_instance"
            sent = await self.cast("action", action, inst)
            if sent != "accepted":
                continue
            self.ledger.actions += 1
            end = time.monotonic() + 3
            while time.monotonic() < end:
                with_error = None
                try:
                    if self.row(uuid)["generation"] != row["generation"]:
                        break
                except Exception as e:
                    with_error = e
                await sleep(self.reactor, 0.05 if with_error is None else 0.2)
            await sleep(self.reactor, self.pause)


class TopCalls:
    """ping_all and instance_list from the top's API, every half second."""

    def __init__(self, reactor: Any, cells: SoakCells, ledger: Ledger, rng: random.Random):
        self.reactor, self.cells, self.ledger, self.rng = reactor, cells, ledger, rng
        self.running = True

    async def run(self) -> None:
        api: CellsAPI | None = None
        leaves = [self.cells.paths[leaf] for leaf in self.cells.leaves()]
        while self.running:
            start = time.monotonic()
            try:
                if api is None:
                    api = await connect(self.reactor, self.cells.files[TOP].api, call_timeout=5.0)
                rows = await api.ping_all(ctxt())
                for row in rows:
                    kind = "ok" if row["ok"] else str(row["error"]).split(":")[0]
                    self.ledger.top_rows[f"ping_all row {kind}"] += 1
                await api.instance_list(ctxt(), cell_name=self.rng.choice(leaves))
                self.ledger.top_rows["instance_list ok"] += 1
            except (NotConnected, CallTimeout):
                self.ledger.top_rows["no answer"] += 1
                if api is not None:
                    api.transport.close()
                api = None
            except CellsError as e:
                self.ledger.top_rows[f"instance_list {error_name(e)}"] += 1
            self.ledger.top_slowest = max(self.ledger.top_slowest, time.monotonic() - start)
            await sleep(self.reactor, 0.5)
        if api is not None:
            api.transport.close()
