"""Build requests are durable (issue 7 item 1).

The cell where a build starts (its *owner*: the API cell, from its
CellsManager) records the request in its store before the caller is told
that it was accepted, keyed by the build's id: the uuid of its first
instance, which a resend of the same request keeps. Before each hand-off
(and before building here) the owner records where it is about to place
the build (the *route*); the record is deleted when the build is placed or
has failed for good (its instances in ERROR), and the id is then kept with
the received message uuids so that a late resend is recognised.

At start-up every build still recorded is resumed (:func:`resume_builds`):
the recorded route is asked first, and a cell that already holds the
instances answers that it took them without building again
(:mod:`cellsd.scheduler.scheduler`), so a crash between a child accepting a
build and the owner forgetting it does not build twice; then the build is
scheduled as usual.

Pending builds are bounded as the outbox is, by ``[cells] outbox_limit``: a
build that would exceed it is refused with PendingBuildsFull, which the
caller of ``build_instances`` gets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cellsd.context import RequestContext
from cellsd.interfaces import IDeliveryStore
from cellsd.messaging.message import dumps
from cellsd.objects.base import deserialize
from cellsd.scheduler.request import uuid_of

if TYPE_CHECKING:
    from cellsd.messaging.runner import MessageRunner


def build_id_of(build_kwargs: Mapping[str, Any]) -> str | None:
    """A build's id: the uuid of its first instance (None without one)."""
    instances = build_kwargs.get("instances") or []
    return uuid_of(instances[0]) if instances else None


@attrs.frozen
class ResumedBuild:
    """A build recorded before a restart, as it is scheduled again."""

    id: str
    ctxt: RequestContext
    build_kwargs: dict[str, Any]
    route: str | None


class BuildJournal:
    """The builds this cell owns, in its store (see the module docstring).

    ``limit`` bounds how many may be pending (None: no bound). Only builds
    accepted through :meth:`accept` or loaded by :meth:`load` are owned:
    the scheduler records routes and completions for those alone.
    """

    log = Logger()

    def __init__(self, store: IDeliveryStore, cell_name: str, limit: int | None = None) -> None:
        self.store = store
        self.cell_name = cell_name
        self.limit = limit
        #: Owned build id -> the route recorded before a restart (or None).
        self._owned: dict[str, str | None] = {}
        #: Builds recorded and not yet done, as this process knows them
        #: (the pending-builds gauge).
        self.pending_count = 0
        #: Builds resumed at start-up.
        self.resumed = 0

    def owns(self, build_id: str | None) -> bool:
        return build_id is not None and build_id in self._owned

    def resume_route(self, build_id: str) -> str | None:
        """Where the build was last sent before a restart, if it was."""
        return self._owned.get(build_id)

    async def accept(self, ctxt: RequestContext, build_kwargs: Mapping[str, Any]) -> str | None:
        """Record a build before it is scheduled; its id, or None when there
        is nothing to record (no instance) or it is recorded already (a
        resend: pending, or done). PendingBuildsFull at the bound."""
        build_id = build_id_of(build_kwargs)
        if build_id is None:
            return None
        recorded = await self.store.build_put(
            build_id,
            dumps(ctxt.to_dict()).decode(),
            dumps(dict(build_kwargs)).decode(),
            self.limit,
            self.cell_name,
        )
        if not recorded:
            self.log.info("build {id} was accepted before; not scheduled again", id=build_id)
            return None
        self._owned[build_id] = None
        self.pending_count += 1
        return build_id

    async def route(self, build_id: str, route: str) -> None:
        """Record where the build is about to be placed."""
        await self.store.build_route(build_id, route)

    async def done(self, build_id: str) -> None:
        """The build was placed or failed for good."""
        await self.store.build_done(build_id)
        if self._owned.pop(build_id, False) is not False:
            self.pending_count = max(0, self.pending_count - 1)

    async def load(self) -> list[ResumedBuild]:
        """Every recorded build, now owned by this process, oldest first.
        A record that cannot be decoded is logged and dropped."""
        builds = []
        for row in await self.store.builds_pending():
            try:
                ctxt = RequestContext.from_dict(orjson.loads(row.ctxt))
                kwargs = deserialize(orjson.loads(row.build_kwargs))
                if not isinstance(kwargs, dict):
                    raise TypeError("build_kwargs is not a JSON object")
            except (orjson.JSONDecodeError, TypeError, ValueError) as e:
                self.log.error("pending build {id} cannot be read ({e}); dropped", id=row.id, e=e)
                await self.store.build_done(row.id)
                continue
            if row.id not in self._owned:
                self.pending_count += 1
            self._owned[row.id] = row.route
            builds.append(ResumedBuild(row.id, ctxt, kwargs, row.route))
        return builds


def _children_routed(my_name: str, routes: Iterable[str | None]) -> set[str]:
    """The children named first in routes from this cell."""
    prefix = my_name + "!"
    return {r[len(prefix) :].split("!", 1)[0] for r in routes if r and r.startswith(prefix)}


async def wait_for_children(
    runner: MessageRunner,
    clock: IReactorTime,
    wanted: set[str],
    any_child: bool,
    grace: float,
    poll: float = 0.1,
) -> bool:
    """Until a link to each child in ``wanted`` is up (and, with
    ``any_child``, to at least one child), or ``grace`` seconds have
    passed; True when they are up."""
    links = runner.links
    children = [c.name for c in runner.state.get_child_cells()]
    wanted = wanted & set(children)
    deadline = clock.seconds() + grace
    while True:
        up = {name for name in children if links.link_for(name, False) is not None}
        if wanted <= up and (not any_child or not children or up):
            return True
        if clock.seconds() >= deadline:
            return False
        await task.deferLater(clock, poll, lambda: None)


async def resume_builds(
    journal: BuildJournal, runner: MessageRunner, clock: IReactorTime, grace: float
) -> int:
    """Schedule again every build recorded before a restart (how many).

    The links to the children the builds were last sent to (or to any
    child, for a build never sent) are waited for, up to ``grace`` seconds,
    so that the first attempt does not find them not yet reconnected; each
    build then runs on its own (nothing here waits for it)."""
    builds = await journal.load()
    if not builds:
        return 0
    wanted = _children_routed(runner.my_name, (b.route for b in builds))
    never_sent = any(b.route is None for b in builds)
    if not await wait_for_children(runner, clock, wanted, never_sent, grace):
        journal.log.warn(
            "resuming builds before every child they need is back (waited {grace} s)", grace=grace
        )
    journal.log.info(
        "resuming {n} builds accepted before a restart: {ids}",
        n=len(builds),
        ids=[b.id for b in builds],
    )
    journal.resumed += len(builds)
    for b in builds:
        d = runner.build_instances(b.ctxt, runner.my_name, b.build_kwargs)
        d.addErrback(_log_failure, b.id)
    return len(builds)


def _log_failure(f: Failure, build_id: str) -> None:
    BuildJournal.log.failure("resumed build {id} failed", f, id=build_id)


class _HandOff:
    __slots__ = ("answer", "expires", "waiters")

    def __init__(self) -> None:
        self.answer: dict[str, Any] | None = None
        self.expires = 0.0
        self.waiters: list[Deferred[dict[str, Any]]] = []


class ReceivedHandOffs:
    """The hand-offs of builds this cell was given, by build id, so that a
    hand-off that reaches it again (its owner resumed it after a restart,
    or sent it again) is placed once: while the first is being placed a
    later arrival waits for its answer; once placed, the same answer is
    given for ``window`` seconds (at most ``limit`` kept). A failure is not
    kept: the next arrival tries again."""

    def __init__(self, clock: IReactorTime, window: float = 300.0, limit: int = 10_000) -> None:
        self.clock, self.window, self.limit = clock, window, limit
        self._entries: OrderedDict[str, _HandOff] = OrderedDict()
        #: Arrivals answered from an earlier one.
        self.duplicates = 0

    def _expire(self) -> None:
        """Forget answers past their window, and the oldest answers beyond
        ``limit`` (answers are kept in the order they expire)."""
        now = self.clock.seconds()
        excess = len(self._entries) - self.limit
        drop = []
        for key, entry in self._entries.items():
            if entry.answer is None:
                continue
            if entry.expires > now and excess <= 0:
                break
            drop.append(key)
            excess -= 1
        for key in drop:
            del self._entries[key]

    async def place_once(
        self, build_id: str, place: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """``await place()`` unless build ``build_id`` was (or is being)
        placed from this cell; then that placement's answer."""
        self._expire()
        entry = self._entries.get(build_id)
        if entry is not None:
            self.duplicates += 1
            if entry.answer is not None:
                return dict(entry.answer)
            waiter: Deferred[dict[str, Any]] = Deferred()
            entry.waiters.append(waiter)
            return dict(await waiter)
        entry = self._entries[build_id] = _HandOff()
        try:
            answer = await place()
        except BaseException:
            failure = Failure()
            self._entries.pop(build_id, None)
            for w in entry.waiters:
                w.errback(failure)
            raise
        entry.answer, entry.expires = answer, self.clock.seconds() + self.window
        self._entries.move_to_end(build_id)
        for w in entry.waiters:
            w.callback(answer)
        return answer
