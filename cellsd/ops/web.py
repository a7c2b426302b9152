"""The metrics endpoint and the live status page, on ``[metrics] listen``.

Paths: ``/`` the status page (:mod:`cellsd.ops.page`), ``/status.json`` its
data, ``/metrics`` the Prometheus text.

The tree comes from a ``ping`` broadcast down from this cell (the same one
``CellsManager.tree`` sends), with a short deadline of its own so that a
hung cell cannot stall the page, and kept for :data:`TREE_TTL` seconds so
that any number of open pages cost one broadcast per interval. Each cell's
ping answer carries how it sees its children (link, mute, last seen) and its
own capacities; this cell's direct neighbours are read from local state on
every request. A cell seen before that no longer answers stays on the page,
drawn as unreachable.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.iweb import IRequest

from cellsd.context import get_admin_context
from cellsd.messaging.message import Response
from cellsd.messaging.routing import DOWN
from cellsd.ops.metrics import CONTENT_TYPE_LATEST, CellMetrics, error_text, ram_disk_free_mb
from cellsd.ops.page import render_page

#: Seconds a tree broadcast is reused for.
TREE_TTL = 5.0
#: Seconds the status page's broadcast waits for the cells.
TREE_TIMEOUT = 3.0
#: Seconds the instance counts (a store query) are reused for.
COUNTS_TTL = 10.0


def _parent(path: str) -> str | None:
    return path.rsplit("!", 1)[0] if "!" in path else None


class StatusSource:
    """Builds the status page's data for one cell."""

    log = Logger()

    def __init__(
        self,
        cell: Any,
        metrics: CellMetrics,
        clock: IReactorTime,
        ttl: float = TREE_TTL,
        timeout: float = TREE_TIMEOUT,
    ) -> None:
        self.cell = cell
        self.metrics = metrics
        self.clock = clock
        self.ttl = ttl
        self.timeout = timeout
        self._tree: list[Response] | None = None
        self._tree_at = 0.0
        self._waiters: list[Deferred[list[Response]]] = []
        #: Every cell path ever seen, with its parent path, in order seen.
        self._known: dict[str, str | None] = {}
        self._counts: dict[str, int] | None = None
        self._counts_at = 0.0

    # -- the tree broadcast, shared ------------------------------------------------

    def tree_responses(self) -> Deferred[list[Response]]:
        """The latest ping answers of every cell below (and this one)."""
        now = self.clock.seconds()
        if self._tree is not None and now - self._tree_at < self.ttl:
            return defer.succeed(self._tree)
        waiter: Deferred[list[Response]] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            d = self.cell.runner.send_broadcast(
                get_admin_context(),
                "ping",
                {"detail": True},
                DOWN,
                need_response=True,
                timeout=self.timeout,
            )
            d.addBoth(self._tree_done)
        return waiter

    def _tree_done(self, result: list[Response] | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        if not isinstance(result, Failure):
            self._tree, self._tree_at = result, self.clock.seconds()
        for w in waiters:
            w.callback(result) if not isinstance(result, Failure) else w.errback(result)

    # -- instance counts -------------------------------------------------------------

    async def instance_counts(self) -> dict[str, int] | None:
        """Live instances per cell path from this cell's store (the API
        cell's store holds every instance with its cell_name); None without
        a store."""
        store = getattr(self.cell, "store", None)
        if store is None:
            return None
        now = self.clock.seconds()
        if self._counts is None or now - self._counts_at >= COUNTS_TTL:
            try:
                rows = await store.instance_get_all_by_filters({"deleted": False})
            except Exception:
                self.log.failure("counting instances for the status page failed")
                return self._counts
            counts: dict[str, int] = {}
            me = self.cell.runner.my_name
            for inst in rows:
                where = getattr(inst, "cell_name", None) or me
                counts[where] = counts.get(where, 0) + 1
            self._counts, self._counts_at = counts, now
        return self._counts

    # -- the page's data ----------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        runner = self.cell.runner
        state = self.cell.state
        me = runner.my_name
        responses = await self.tree_responses()
        counts = await self.instance_counts()
        answers: dict[str, Response] = {}
        for r in responses:
            answers[r.cell_name] = r
            if r.cell_name not in self._known:
                self._known[r.cell_name] = _parent(r.cell_name)
            if not r.failure and isinstance(r.value, dict):
                for kid in r.value.get("children", []):
                    self._known.setdefault(f"{r.cell_name}!{kid}", r.cell_name)
        self._known.setdefault(me, None)
        links = getattr(self.cell.links, "link_states", None)
        local_links = links() if links is not None else {"parents": {}, "children": {}}
        cells = [
            self._cell_row(path, answers, state, local_links, counts) for path in self._ordered()
        ]
        parents = [
            {
                "name": p.name,
                "link_up": local_links.get("parents", {}).get(p.name, {}).get("up"),
                "last_seen_age": state.last_seen_age(p),
            }
            for p in state.get_parent_cells()
        ]
        return {
            "cell": me,
            "tree_age": round(self.clock.seconds() - self._tree_at, 3),
            "cells": cells,
            "parents": parents,
            "failures": list(reversed(self.metrics.failures)),
            "stats": dict(runner.stats),
            "has_store": getattr(self.cell, "store", None) is not None,
            # Must-deliver messages waiting for each parent (and why).
            "outbox": outbox.status() if (outbox := getattr(runner, "outbox", None)) else None,
        }

    def _ordered(self) -> list[str]:
        """Known paths, parents before children, siblings by name."""
        kids: dict[str | None, list[str]] = {}
        for path, parent in self._known.items():
            kids.setdefault(parent, []).append(path)
        out: list[str] = []

        def walk(parent: str | None) -> None:
            for path in sorted(kids.get(parent, [])):
                out.append(path)
                walk(path)

        walk(None)
        return out

    def _cell_row(
        self,
        path: str,
        answers: dict[str, Response],
        state: Any,
        local_links: dict[str, Any],
        counts: dict[str, int] | None,
    ) -> dict[str, Any]:
        me = self.cell.runner.my_name
        parent = _parent(path)
        name = path.rsplit("!", 1)[-1]
        answer = answers.get(path)
        row: dict[str, Any] = {
            "path": path,
            "name": name,
            "parent": parent,
            "ok": answer is not None and not answer.failure,
            "error": None,
            "link_up": None,
            "mute": None,
            "last_seen_age": None,
            "reconnects": None,
            "ram_free_mb": None,
            "disk_free_mb": None,
            "instances": None if counts is None else counts.get(path, 0),
        }
        if answer is None:
            row["error"] = "no answer: not reached (a cell above it did not answer)"
        elif answer.failure:
            row["error"] = error_text(answer.value)
        else:
            caps = answer.value.get("status", {}).get("capacities", {})
            row.update({f"{k}_mb": v for k, v in ram_disk_free_mb(caps).items()})
        if path == me:
            row["link_up"] = True
        elif parent == me:
            # A direct child: what this cell knows now, not the cached answer.
            child = state.get_child_cell(name)
            link = local_links.get("children", {}).get(name, {})
            row["link_up"] = link.get("up")
            row["reconnects"] = link.get("reconnects")
            if "state" in link:  # health (cellsd.links.health) and why
                row["health"], row["health_reason"] = link["state"], link.get("reason")
            if child is not None:
                row["mute"] = state.is_mute(child)
                row["last_seen_age"] = state.last_seen_age(child)
        else:
            above = answers.get(parent) if parent else None
            if above is not None and not above.failure:
                seen = above.value.get("status", {}).get("children", {}).get(name, {})
                row["link_up"] = seen.get("link_up")
                row["reconnects"] = seen.get("reconnects")
                if seen.get("health"):  # as its parent sees it
                    row["health"], row["health_reason"] = seen["health"], seen.get("health_reason")
                row["mute"] = seen.get("mute")
                row["last_seen_age"] = seen.get("last_seen_age")
        if row["link_up"] is False and row["ok"]:
            row["ok"] = False
            row["error"] = "link down"
        return row


# -- resources ----------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    return str(value)


class StatusJSON(resource.Resource):
    isLeaf = True

    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self.source = source

    def render_GET(self, request: IRequest) -> int:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        d = Deferred.fromCoroutine(self.source.status())

        def write(data: dict[str, Any]) -> None:
            request.write(orjson.dumps(data, default=_json_default))
            request.finish()

        def failed(f: Failure) -> None:
            self.source.log.failure("building /status.json failed", f)
            request.setResponseCode(http.INTERNAL_SERVER_ERROR)
            request.write(orjson.dumps({"error": error_text(f.value)}))
            request.finish()

        d.addCallbacks(write, failed)
        return server.NOT_DONE_YET


class MetricsText(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: CellMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.render()


class StatusPage(resource.Resource):
    isLeaf = True

    def __init__(self, cell_name: str) -> None:
        super().__init__()
        self.cell_name = cell_name

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return render_page(self.cell_name).encode()


def make_root(source: StatusSource) -> resource.Resource:
    root = resource.Resource()
    root.putChild(b"", StatusPage(source.cell.runner.my_name))
    root.putChild(b"status.json", StatusJSON(source))
    root.putChild(b"metrics", MetricsText(source.metrics))
    return root


class QuietSite(server.Site):
    """A Site that writes no access log: Prometheus and open status pages
    would add a line every few seconds to the cell's log."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def make_site(cell: Any, metrics: CellMetrics, clock: IReactorTime) -> server.Site:
    """The site serving ``/``, ``/status.json`` and ``/metrics`` for ``cell``."""
    return QuietSite(make_root(StatusSource(cell, metrics, clock)))
