"""Durable delivery of must-deliver messages to the parents (issue 7).

The ``*_at_top`` state changes a cell sends up (instance updates and
destroys, faults, bandwidth usage, block device mappings) must reach the top
even if a link is down, a message is lost or a cell restarts. They travel
store-and-forward, one hop at a time:

* The cell that makes one writes its wire form for each parent to the
  store's outbox *before* the caller is told it was accepted; a full outbox
  (``[cells] outbox_limit``) refuses it with OutboxFull.
* A drain per parent sends what is queued while the link is up, at most
  ``window`` at once, and deletes each message when the parent confirms it.
  Whatever is left is sent again after a reconnect, a failure (with
  back-off) or a restart.
* A parent confirms only once the message is safe: a middle cell has queued
  it in its own outbox (recording the uuid in the same transaction), the
  top has applied it. A resend of a uuid already taken is confirmed and
  dropped; at the top instance generations drop stale updates as well.

Delivery is therefore at-least-once on the wire and once in effect, for as
long as received uuids are kept (``[cells] received_retention``).
"""

from __future__ import annotations

import datetime
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cellsd.errors import (
    CellOutcomeUnknown,
    CellsError,
    CellTimeout,
    CellUnreachable,
    OutboxFull,
)
from cellsd.interfaces import IDeliveryStore, INeighbourLinks
from cellsd.messaging.message import Message
from cellsd.state import CellStateManager

#: The methods whose messages are written to the outbox: every state change
#: sent up to the top (capacities and capabilities are re-sent periodically
#: anyway, and the calls wait for their answer).
MUST_DELIVER = frozenset(
    {
        "instance_update_at_top",
        "instance_destroy_at_top",
        "instance_fault_create_at_top",
        "bw_usage_update_at_top",
        "bdm_update_or_create_at_top",
        "bdm_destroy_at_top",
    }
)

#: Methods whose messages carry no generation, so that two about the same
#: thing must be applied in the order they were accepted.
ORDERED = frozenset(
    {
        "bdm_update_or_create_at_top",
        "bdm_destroy_at_top",
        "bw_usage_update_at_top",
        "instance_fault_create_at_top",
    }
)
#: How far (in windows) a drain looks past messages that must wait.
SCAN_PAGES = 8

#: Seconds before the first retry after a failed send; doubled up to the max.
RETRY_DELAY = 1.0
RETRY_MAX_DELAY = 30.0
#: How often received uuids older than the retention are forgotten.
PRUNE_INTERVAL = 3600.0


def _text(f: Failure) -> str:
    value = f.value
    if isinstance(value, CellsError):
        return value.message
    return f"{type(value).__name__}: {value}"


def ordering_key(method: str, body: bytes) -> str | None:
    """What two messages must not overtake each other about: the block
    device mappings of one instance, its faults (the top recognises a
    fault it already holds, which needs them one at a time), the bandwidth
    usage of one interface. None for instance reports: they carry
    generations, and the top drops an older one whatever the order."""
    if method not in ORDERED:
        return None
    try:
        kwargs = orjson.loads(body).get("method_kwargs") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(kwargs, dict):
        return None
    if method == "bw_usage_update_at_top":
        info = kwargs.get("bw_update_info")
        info = info if isinstance(info, dict) else {}
        return f"bw:{info.get('uuid')}:{info.get('mac')}"
    if method == "instance_fault_create_at_top":
        fault = kwargs.get("instance_fault")
        fault = fault if isinstance(fault, dict) else {}
        fault = fault.get("nova_object.data", fault)
        return f"fault:{fault.get('instance_uuid')}"
    bdm = kwargs.get("bdm")
    if isinstance(bdm, dict):
        bdm = bdm.get("nova_object.data", bdm)
    uuid = bdm.get("instance_uuid") if isinstance(bdm, dict) else kwargs.get("instance_uuid")
    return f"bdm:{uuid}"


class _Drain:
    """The send loop of one parent: at most one running at a time."""

    def __init__(self) -> None:
        self.running = False
        self.again = False
        self.delay = RETRY_DELAY
        self.retry: IDelayedCall | None = None
        self.last_error: str | None = None


class Outbox:
    """Queues must-deliver messages in the store and sends them to the
    parents until each confirms (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        store: IDeliveryStore,
        state: CellStateManager,
        links: INeighbourLinks,
        clock: IReactorTime,
        limit: int = 100_000,
        window: int = 32,
        send_timeout: float = 60.0,
        retention: float = 7 * 24 * 3600.0,
    ) -> None:
        self.store = store
        self.state = state
        self.links = links
        self.clock = clock
        self.limit = limit
        self.window = max(1, window)
        self.send_timeout = send_timeout
        self.retention = retention
        self._drains: dict[str, _Drain] = {}
        #: Messages waiting per parent (kept in step with the store).
        self.depths: dict[str, int] = {}
        self.stats: dict[str, int] = {
            "queued": 0,
            "sent": 0,
            "confirmed": 0,
            "send_failures": 0,
            "refused_full": 0,
            "duplicates": 0,
        }
        self._prune_call: IDelayedCall | None = None
        self._stopped = True
        #: The uuids being applied at the top: a resend that arrives while
        #: the first copy runs waits for it instead of applying twice.
        self._applying: dict[str, list[Deferred[bool]]] = {}
        self._puts = 0
        self._idle_waiters: list[Deferred[None]] = []
        #: Puts and applies that arrived before start() (a restarted cell
        #: accepts connections while its store is still being opened): they
        #: wait for it rather than fail.
        self._started = False
        self._start_waiters: list[Deferred[None]] = []

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Count what a previous run left and start sending it."""
        self._stopped = False
        self.depths = dict(await self.store.outbox_counts())
        observers = getattr(self.links, "link_up_observers", None)
        if observers is not None:
            observers.append(self._link_up)
        for name in self.depths:
            self.kick(name)
        self._prune_call = self.clock.callLater(0, self._prune)
        # After the counts: a put that waited is counted once, by itself.
        self._started = True
        waiters, self._start_waiters = self._start_waiters, []
        for w in waiters:
            w.callback(None)

    def stop(self) -> None:
        """Stop sending (what is queued stays queued for the next start)."""
        self._stopped = True
        waiters, self._start_waiters = self._start_waiters, []
        for w in waiters:
            w.errback(
                CellsError(
                    f"cell {self.state.my_name} is stopping before its store was opened; "
                    "the message was not stored"
                )
            )
        observers = getattr(self.links, "link_up_observers", None)
        if observers is not None and self._link_up in observers:
            observers.remove(self._link_up)
        for drain in self._drains.values():
            if drain.retry is not None and drain.retry.active():
                drain.retry.cancel()
            drain.retry = None
        if self._prune_call is not None and self._prune_call.active():
            self._prune_call.cancel()
        self._prune_call = None

    def _link_up(self, name: str, is_parent: bool) -> None:
        if is_parent:
            drain = self._drains.get(name)
            if drain is not None:
                drain.delay = RETRY_DELAY
            self.kick(name)

    # -- accepting messages -------------------------------------------------------

    def parents(self) -> list[str]:
        return [c.name for c in self.state.get_parent_cells()]

    def _when_started(self) -> Deferred[None]:
        if self._started:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._start_waiters.append(d)
        return d

    def put(self, msg: Message, received: bool = False) -> Deferred[bool]:
        """Queue ``msg`` for every parent; fires True once it is in the
        store, False for a received uuid taken before (a resend).
        OutboxFull when the outbox is at its limit. Before start() it
        waits for it (the store is being opened)."""
        header, body = msg.header.to_bytes(), msg.body.to_bytes()
        names = self.parents()
        entries = [(name, header, body) for name in names]
        d = self._when_started().addCallback(
            lambda _: self.store.outbox_put(
                msg.uuid,
                msg.method_name,
                entries,
                self.limit,
                cell_name=self.state.my_name,
                received=received,
            )
        )

        self._puts += 1

        def put_done(result: Any) -> Any:
            self._puts -= 1
            self._maybe_idle()
            return result

        def queued(fresh: bool) -> bool:
            if not fresh:
                self.stats["duplicates"] += 1
                return False
            self.stats["queued"] += 1
            for name in names:
                self.depths[name] = self.depths.get(name, 0) + 1
                self.kick(name)
            return True

        def refused(f: Failure) -> Failure:
            if isinstance(f.value, OutboxFull):
                self.stats["refused_full"] += 1
            return f

        return d.addCallbacks(queued, refused).addBoth(put_done)

    def depth(self) -> int:
        return sum(self.depths.values())

    @property
    def busy(self) -> bool:
        """A message is being queued or a drain is sending."""
        return self._puts > 0 or any(d.running for d in self._drains.values())

    def when_idle(self) -> Deferred[None]:
        """Fires once nothing is being queued or sent (messages waiting
        for a retry or a link do not count)."""
        if not self.busy:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _maybe_idle(self) -> None:
        if self.busy:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for w in waiters:
            w.callback(None)

    # -- applying at the top ---------------------------------------------------------

    def apply_once(self, uuid: str, method: str, apply: Any) -> Deferred[bool]:
        """Run ``apply()`` (a Deferred-returning callable) for must-deliver
        message ``uuid`` unless it was applied before; record it after.
        Fires True when applied now, False for a resend (one that arrives
        while the first copy runs waits for it, then fires False)."""
        waiters = self._applying.get(uuid)
        if waiters is not None:
            self.stats["duplicates"] += 1
            waiter: Deferred[bool] = Deferred()
            waiters.append(waiter)
            return waiter

        async def run() -> bool:
            await self._when_started()
            if await self.store.message_was_received(uuid):
                self.stats["duplicates"] += 1
                return False
            await apply()
            await self.store.message_record_received(uuid, method)
            return True

        self._applying[uuid] = []

        def done(result: Any) -> Any:
            # A resend waiting on a copy that failed fails too: confirming
            # it would delete the sender's only copy.
            for w in self._applying.pop(uuid, []):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(False)
            return result

        return Deferred.fromCoroutine(run()).addBoth(done)

    # -- sending ---------------------------------------------------------------------

    def kick(self, name: str) -> None:
        """Send what is queued for parent ``name`` now, if its link is up."""
        if self._stopped:
            return
        drain = self._drains.setdefault(name, _Drain())
        if drain.running:
            drain.again = True
            return
        if drain.retry is not None and drain.retry.active():
            drain.retry.cancel()
        drain.retry = None
        drain.running, drain.again = True, False
        d = Deferred.fromCoroutine(self._drain(name, drain))
        d.addErrback(lambda f: self.log.failure("outbox to {parent} failed", f, parent=name))

    async def _drain(self, name: str, drain: _Drain) -> None:
        try:
            while True:
                try:
                    ok = await self._send_all(name, drain)
                except Exception as e:
                    # The store failed us (the messages are still in it).
                    drain.last_error = f"{type(e).__name__}: {e}"
                    self.log.warn(
                        "outbox to {parent}: {why}; trying again later",
                        parent=name,
                        why=drain.last_error,
                    )
                    ok = False
                if not ok:
                    self._retry_later(name, drain)
                    return
                if not drain.again:
                    drain.delay = RETRY_DELAY
                    return
                drain.again = False
        finally:
            drain.running = False
            self._maybe_idle()

    async def _send_all(self, name: str, drain: _Drain) -> bool:
        """Send every queued message once; False when some failed (the link
        is down or the parent refused), so a retry is due.

        Up to ``window`` messages are in flight at once, oldest first, but
        never two with the same ordering key (:func:`ordering_key`): the
        later one waits until the earlier is confirmed, so such messages
        are applied in the order they were accepted, at every hop."""
        failed: set[int] = set()
        while not self._stopped:
            link = self.links.link_for(name, True)
            if link is None:
                drain.last_error = f"no link to {name} is up"
                return False
            ready = await self._next_sendable(name, failed)
            if not ready:
                return not failed
            results = await defer.gatherResults(
                [Deferred.fromCoroutine(self._send_one(link, name, e)) for e in ready]
            )
            for entry, sent in zip(ready, results, strict=True):
                if not sent:
                    failed.add(entry.id)
            if not all(results) and self.links.link_for(name, True) is None:
                return False
        return not failed

    async def _next_sendable(self, name: str, failed: set[int]) -> list[Any]:
        """The oldest queued messages that may go now (at most ``window``):
        not failed in this pass, and first of their ordering key."""
        ready: list[Any] = []
        taken: set[str] = set()
        after, scanned = 0, 0
        while len(ready) < self.window and scanned < self.window * SCAN_PAGES:
            page = await self.store.outbox_pending(name, after, self.window)
            if not page:
                break
            for entry in page:
                key = ordering_key(entry.method, entry.body)
                blocked = key is not None and key in taken
                if key is not None:
                    taken.add(key)
                if entry.id not in failed and not blocked and len(ready) < self.window:
                    ready.append(entry)
            after, scanned = page[-1].id, scanned + len(page)
        return ready

    async def _send_one(self, link: Any, name: str, entry: Any) -> bool:
        self.stats["sent"] += 1
        try:
            await link.deliver(entry.header, entry.body, self.send_timeout)
        except Exception:
            f = Failure()
            self.stats["send_failures"] += 1
            why = _text(f)
            self._drains[name].last_error = why
            # A link that went away or an answer that did not come is
            # routine; a parent that refuses the message is worth a warning.
            routine = isinstance(f.value, CellUnreachable | CellTimeout | CellOutcomeUnknown)
            emit = self.log.info if routine else self.log.warn
            emit(
                "{method} uuid={uuid} not confirmed by {parent}: {why}; kept for a resend",
                method=entry.method,
                uuid=entry.uuid,
                parent=name,
                why=why,
            )
            await self.store.outbox_failed(entry.id, why)
            return False
        try:
            await self.store.outbox_confirm(entry.id)
        except Exception as e:
            # Still in the store: it will be sent again, and dropped there.
            self.log.warn(
                "{method} uuid={uuid} confirmed by {parent} but not forgotten here ({why}); "
                "it will be sent again",
                method=entry.method,
                uuid=entry.uuid,
                parent=name,
                why=f"{type(e).__name__}: {e}",
            )
            return False
        self.stats["confirmed"] += 1
        self.depths[name] = max(0, self.depths.get(name, 0) - 1)
        return True

    def _retry_later(self, name: str, drain: _Drain) -> None:
        if self._stopped:
            return
        delay, drain.delay = drain.delay, min(drain.delay * 2, RETRY_MAX_DELAY)
        drain.retry = self.clock.callLater(delay, self.kick, name)

    # -- upkeep ------------------------------------------------------------------------

    def _prune(self) -> None:
        older = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=self.retention)
        d = self.store.messages_prune_received(older)
        d.addErrback(lambda f: self.log.failure("pruning received uuids failed", f))
        if not self._stopped:
            self._prune_call = self.clock.callLater(PRUNE_INTERVAL, self._prune)

    def status(self) -> dict[str, Any]:
        """What waits for each parent, and why the last send failed."""
        return {
            "limit": self.limit,
            "waiting": dict(self.depths),
            "last_errors": {
                name: drain.last_error
                for name, drain in self._drains.items()
                if drain.last_error and self.depths.get(name)
            },
            **self.stats,
        }
