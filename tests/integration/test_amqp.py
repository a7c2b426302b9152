"""The AMQP transport against the real RabbitMQ on 127.0.0.1:5672.

Every test uses a cell name of its own (``t-<random>``), so runs do not
collide, and deletes what it declared for that cell (its shared queue and
fanout exchange; the exclusive queues go with their connections; the common
``cells`` exchange stays, as it would in a deployment). Guarded by
:func:`tests.services.require_rabbitmq`: skipped without RabbitMQ, failed in CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from cellsd.client import connect_amqp
from cellsd.context import RequestContext
from cellsd.errors import CallTimeout, NotConnected
from cellsd.rpc.amqp_channel import open_txamqp_channel
from cellsd.rpc.amqp_client import AMQPTransport
from cellsd.rpc.amqp_common import Topology, find_spec, parse_amqp_url
from cellsd.rpc.amqp_server import AMQPServer, RPCDispatcher
from cellsd.rpc.manager import CellsManager
from cellsd.testing import MemoryTree
from tests.integration.amqp_worker import CountingDispatcher
from tests.integration.cluster import Cluster
from tests.services import ServiceMissing, in_ci, require_rabbitmq
from tests.unit.rpc_behaviour import RPCBehaviourTests

pytestmark = [
    pytest.mark.integration,
    # txamqp 0.8 still calls defer.returnValue, deprecated since Twisted 24.7.
    pytest.mark.filterwarnings(
        "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
CTXT = RequestContext(is_admin=True)
CASTS = 1000


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` every 20 ms; fail after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await task.deferLater(reactor, 0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class AMQPCase(TestCase):
    """Unique names per test, workers and clients stopped, queues deleted."""

    timeout = 60

    def setUp(self) -> None:
        self.url = require_rabbitmq()
        self.cell = f"t-{uuid.uuid4().hex[:10]}"
        self.addCleanup(lambda: Deferred.fromCoroutine(self._delete_declared()))

    async def _delete_declared(self) -> None:
        t = Topology(self.cell)
        ch = await open_txamqp_channel(reactor, parse_amqp_url(self.url), find_spec())
        try:
            await ch.delete_queue(t.shared_queue)
            await ch.delete_exchange(t.fanout_exchange)
        finally:
            await ch.close()

    async def worker(
        self, dispatcher: RPCDispatcher, worker_id: str | None = None, prefetch: int = 32
    ) -> AMQPServer:
        server = AMQPServer(reactor, self.url, self.cell, dispatcher, worker_id, prefetch=prefetch)
        server.startService()
        self.addCleanup(server.stopService)
        await server.when_ready()
        return server

    async def client(self, cast_timeout: float = 60.0) -> AMQPTransport:
        transport = AMQPTransport(reactor, self.url, self.cell, cast_timeout=cast_timeout)
        self.addCleanup(transport.disconnect)
        await transport.start()
        return transport

    async def cast_all(
        self,
        transport: AMQPTransport,
        ns: range,
        in_flight: int = 100,
        pace: float = 0.0,
        confirmed: list[int] | None = None,
    ) -> int:
        """Cast ``count(n)`` for every n, at most ``in_flight`` at a time and
        one per ``pace`` seconds, until each was confirmed by the broker (a
        cast whose confirm was lost is sent again: at least once). Appends
        each confirmed n to ``confirmed``; returns how many were sent again."""
        retries = 0
        semaphore = defer.DeferredSemaphore(in_flight)
        done = confirmed if confirmed is not None else []

        async def one(n: int) -> None:
            nonlocal retries
            try:
                while True:
                    try:
                        await transport.cast(CTXT, "count", "1.0", {"n": n})
                        done.append(n)
                        return
                    except (NotConnected, CallTimeout):
                        retries += 1
                        await task.deferLater(reactor, 0.1)
            finally:
                semaphore.release()

        sending = []
        for n in ns:
            await semaphore.acquire()
            sending.append(Deferred.fromCoroutine(one(n)))
            if pace:
                await task.deferLater(reactor, pace)
        await defer.gatherResults(sending)
        return retries


class AMQPBehaviourTests(RPCBehaviourTests, AMQPCase):
    """The shared RPC behaviour through RabbitMQ: a CellsManager over the
    eight-cell in-memory tree, served by one AMQP worker."""

    async def _start(self) -> None:
        self.tree = MemoryTree(reactor, call_timeout=5.0)
        runner = self.tree["api-cell"]
        await self.worker(CellsManager(runner, runner.state, reactor))
        self.api = await connect_amqp(reactor, self.url, self.cell, call_timeout=10.0)
        self.transport = self.api.transport
        assert isinstance(self.transport, AMQPTransport)
        self.addCleanup(self.transport.disconnect)

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial awaits it
        super().setUp()
        return Deferred.fromCoroutine(self._start())

    async def wait(self, d: Deferred[Any]) -> Any:
        return await d


class GatedDispatcher:
    """Answers ``ping`` at once and ``slow`` when the test fires its gate."""

    def __init__(self) -> None:
        self.gate: Deferred[Any] = Deferred()

    def dispatch(self, ctxt: Any, method: str, version: str, kwargs: Any) -> Deferred[Any]:
        if method == "slow":
            return self.gate
        return defer.succeed(method)


class AMQPRealTests(AMQPCase):
    async def test_timeout_then_late_reply(self) -> None:
        """A call whose answer comes after its timeout fails with
        CallTimeout, leaves no pending entry, and its reply is dropped and
        counted when it arrives."""
        gated = GatedDispatcher()
        await self.worker(gated)
        transport = await self.client()
        with self.assertRaises(CallTimeout):
            await transport.call(CTXT, "slow", "1.0", {}, 0.3)
        self.assertEqual(transport.pending_calls, 0)
        gated.gate.callback("late")
        await until(lambda: transport.late_replies == 1, 5, "the late reply")
        self.assertEqual(await transport.call(CTXT, "ping", "1.0", {}, 5), "ping")

    async def test_fanout_and_one_worker(self) -> None:
        """A fanout cast is executed by every worker; a call prepared for one
        worker is executed by that one."""
        a, b = CountingDispatcher(reactor), CountingDispatcher(reactor)
        await self.worker(a, "wa")
        await self.worker(b, "wb")
        transport = await self.client()
        await transport.prepare(fanout=True).cast(CTXT, "count", "1.0", {"n": 7})
        await until(lambda: a.executed == [7] and b.executed == [7], 5, "both workers")
        self.assertEqual(await transport.prepare("wb").call(CTXT, "count", "1.0", {"n": 8}, 5), 8)
        self.assertEqual((a.executed, b.executed), ([7], [7, 8]))

    async def test_two_workers_execute_each_cast_once(self) -> None:
        """Two workers of one cell consume the same topic: 1,000 casts are
        each executed exactly once in total, and both workers take part."""
        a, b = CountingDispatcher(reactor), CountingDispatcher(reactor)
        await self.worker(a)
        await self.worker(b)
        transport = await self.client()
        self.assertEqual(await self.cast_all(transport, range(CASTS)), 0)
        await until(lambda: len(a.executed) + len(b.executed) >= CASTS, 20, "every cast")
        await task.deferLater(reactor, 0.2)  # room for a duplicate to show
        self.assertEqual(sorted(a.executed + b.executed), list(range(CASTS)))
        self.assertTrue(a.executed and b.executed, "one worker took everything")

    async def test_worker_killed_mid_stream_loses_nothing(self) -> None:
        """Of two workers, one (a real process) is killed with SIGKILL in the
        middle of 1,000 casts: every cast is still executed, its unacked
        messages redelivered to the other. Executions are recorded per cast,
        so duplicates (executed, then killed before the ack reached the
        broker) are counted and reported, not hidden."""
        tmp = tempfile.mkdtemp(prefix="cellsd-amqp-")
        self.addCleanup(shutil.rmtree, tmp, True)
        out = os.path.join(tmp, "victim.out")
        victim = _WorkerProcess()
        argv = [sys.executable, "-m", "tests.integration.amqp_worker", self.url, self.cell]
        argv += ["victim", out, "--delay", "0.02", "--prefetch", "10"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = reactor.spawnProcess(victim, sys.executable, argv, env=env, path=str(ROOT))
        self.addCleanup(victim.kill)
        await victim.ready
        survivor = CountingDispatcher(reactor, delay=0.02)
        await self.worker(survivor, prefetch=10)
        transport = await self.client()

        def victim_done() -> list[int]:
            return [int(x) for x in Path(out).read_text().split()] if os.path.exists(out) else []

        sending = Deferred.fromCoroutine(self.cast_all(transport, range(CASTS)))
        await until(lambda: len(victim_done()) >= 100, 20, "the victim to work")
        os.kill(proc.pid, signal.SIGKILL)
        at_kill = len(victim_done()) + len(survivor.executed)
        self.assertLess(at_kill, CASTS, "the stream was over before the kill")
        await sending
        await victim.ended

        def seen() -> Counter[int]:
            return Counter(victim_done() + survivor.executed)

        await until(lambda: len(seen()) == CASTS, 30, "every cast executed")
        await task.deferLater(reactor, 0.3)
        counts = seen()
        self.assertEqual(set(counts), set(range(CASTS)))
        duplicates = sum(counts.values()) - CASTS
        print(f"\nkilled worker: {at_kill} executed at the kill, {duplicates} duplicates")
        self.assertLessEqual(duplicates, 10, "more duplicates than the victim's prefetch")

    async def test_broker_restart_mid_stream(self) -> None:
        """RabbitMQ's app is stopped and started in the middle of 1,000 casts:
        none is lost, and the workers and the client reconnect and redeclare
        by themselves.

        Casts 0-599 are sent while the workers run; after 100 executions the
        workers hold what they receive, so confirmed casts are still queued
        when the broker stops (they must survive it: durable queue,
        persistent messages). Casts 600-999 are sent once the client has
        seen the connection go: they wait for it to come back. The requests
        the workers held when their connections went are executed, their
        acks lost, and delivered again: duplicates, counted and reported."""
        ctl = shutil.which("rabbitmqctl")
        if ctl is None:
            if in_ci():
                raise ServiceMissing("rabbitmqctl is required in CI for the restart test")
            raise self.skipTest("rabbitmqctl not found: the restart test drives it")
        a, b = CountingDispatcher(reactor, delay=0.002), CountingDispatcher(reactor, delay=0.002)
        wa, wb = await self.worker(a, prefetch=5), await self.worker(b, prefetch=5)
        transport = await self.client(cast_timeout=30.0)

        async def rabbitmqctl(command: str) -> None:
            out, err, code = await getProcessOutputAndValue(ctl, [command], env=os.environ)
            self.assertEqual(code, 0, f"rabbitmqctl {command}: {out!r} {err!r}")

        def executed() -> int:
            return len(a.executed) + len(b.executed)

        confirmed: list[int] = []
        marks: dict[str, int] = {}

        def lost() -> None:
            marks.setdefault("lost", 1)

        transport._link.reconnector.on_lost.append(lost)

        async def restart() -> None:
            await until(lambda: executed() >= 100, 20, "work to start")
            a.pause()
            b.pause()
            marks["executed_at_pause"] = executed()
            # start_app is idempotent: the cleanup restarts a broker left stopped.
            self.addCleanup(lambda: Deferred.fromCoroutine(rabbitmqctl("start_app")))
            await rabbitmqctl("stop_app")
            marks["confirmed_at_stop"] = len(confirmed)
            await until(
                lambda: wa.reconnector.current is None and wb.reconnector.current is None,
                10,
                "the workers to see the broker go",
            )
            a.resume()
            b.resume()
            await rabbitmqctl("start_app")

        restarting = Deferred.fromCoroutine(restart())
        resent = await self.cast_all(transport, range(600), 50, 0.0, confirmed)
        await until(lambda: "lost" in marks, 30, "the client to see the broker go")
        resent += await self.cast_all(transport, range(600, CASTS), 50, 0.0, confirmed)
        await restarting
        self.assertLess(marks["executed_at_pause"], marks["confirmed_at_stop"])

        def seen() -> Counter[int]:
            return Counter(a.executed + b.executed)

        await until(lambda: len(seen()) == CASTS, 30, "every cast executed")
        # Each side reconnects on its own backoff: one worker may have
        # drained the queue before the other was back.
        reconnectors = [wa.reconnector, wb.reconnector, transport._link.reconnector]
        await until(
            lambda: all(r.connections >= 2 and r.current for r in reconnectors),
            15,
            "the workers and the client to reconnect",
        )
        await task.deferLater(reactor, 0.3)
        counts = seen()
        self.assertEqual(set(counts), set(range(CASTS)))
        duplicates = sum(counts.values()) - CASTS
        print(f"\nbroker restart: {marks}; {resent} casts sent again, {duplicates} duplicates")


class AMQPDaemonTests(AMQPCase):
    async def test_cellsd_serves_amqp_when_configured(self) -> None:
        """A real ``cellsd run`` with ``[api] amqp`` set serves CellsAPI
        through RabbitMQ: make_service adds the AMQP worker to the cell."""
        base = Path(tempfile.mkdtemp(prefix="cd"))
        self.addCleanup(shutil.rmtree, base, True)
        cluster = Cluster(base, {self.cell: []}, extra={"api": {"amqp": self.url}})
        cluster.start(self.cell)
        self.addCleanup(cluster.stop_all)
        # The call waits in the cell's queue until the daemon consumes it.
        api = await connect_amqp(reactor, self.url, self.cell, call_timeout=30.0)
        self.addCleanup(api.transport.disconnect)  # type: ignore[attr-defined]  # AMQPTransport
        row = await api.ping(CTXT)
        self.assertEqual((row["cell"], row["ok"]), (self.cell, True))
        cluster.wait_for_log(self.cell, "connected to RabbitMQ")


class _WorkerProcess(ProcessProtocol):
    """A worker subprocess: ``ready`` once it prints so, ``ended`` at exit."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"ready" in self.output and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError(f"worker exited: {self.output.decode()}"))
        self.ended.callback(None)

    def kill(self) -> Deferred[None]:
        if not self.ended.called and self.transport is not None:
            self.transport.signalProcess("KILL")
        return self.ended
