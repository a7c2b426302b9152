"""CellsManager: the server side of the local RPC API.

Transports (local AMP, AMQP, in memory) hand each request to
:meth:`CellsManager.dispatch`, which accepts only methods registered with
:func:`rpc_method`, checks the version and the arguments, and runs the
method. A method turns the request into MessageRunner calls and
post-processes the Responses.

This module holds dispatch and cellsd's own diagnostics (ping, ping_all,
tree); the seed methods of behaviour §4.3 are mixins:
:mod:`cellsd.rpc.manager_methods` (requests that act) and
:mod:`cellsd.rpc.manager_queries` (requests that read); cellsd's views and
its broadcasts with per-cell outcomes are :mod:`cellsd.rpc.manager_views`
and :mod:`cellsd.rpc.manager_outcomes`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cellsd.context import RequestContext
from cellsd.errors import CellsError, InvalidArguments, UnknownMethod
from cellsd.interfaces import ICellStore
from cellsd.messaging.message import Response
from cellsd.messaging.routing import DOWN, UP, split_path
from cellsd.messaging.runner import MessageRunner
from cellsd.rpc.manager_methods import InstanceMethods
from cellsd.rpc.manager_outcomes import OutcomeMethods
from cellsd.rpc.manager_queries import QueryMethods
from cellsd.rpc.manager_views import ViewMethods
from cellsd.rpc.registry import (
    RPC_API_VERSION,
    parse_version,
    registered_version,
    rpc_method,
    rpc_methods,
)
from cellsd.scheduler.journal import BuildJournal
from cellsd.state import CellStateManager

__all__ = ["RPC_API_VERSION", "CellsManager", "parse_version", "rpc_method", "rpc_methods"]


class CellsManager(InstanceMethods, QueryMethods, ViewMethods, OutcomeMethods):
    """Turns local RPC requests into cell messages.

    ``store`` is this cell's ICellStore, used by validate_console_port and
    the cells table (cell_create/update/delete/get); without one the
    runner's ``store`` attribute is used, if it has one. With ``builds``
    (the cell's BuildJournal) a build is recorded in the store before
    build_instances returns, and scheduled after it has.
    """

    log = Logger()

    def __init__(
        self,
        runner: MessageRunner,
        state: CellStateManager,
        clock: IReactorTime,
        monotonic: Callable[[], float] = time.monotonic,
        store: ICellStore | None = None,
        builds: BuildJournal | None = None,
    ) -> None:
        self.runner = runner
        self.state = state
        self.clock = clock
        self.store = store
        self.builds = builds
        self._monotonic = monotonic

    @property
    def my_name(self) -> str:
        return self.state.my_name

    # -- dispatch ------------------------------------------------------------

    def dispatch(
        self,
        ctxt: RequestContext,
        method: str,
        version: str,
        kwargs: dict[str, Any],
    ) -> Deferred[Any]:
        """Run one request; fails with a typed error for an unknown method,
        an unsupported version or arguments that do not fit."""
        try:
            since = registered_version(method)
            if since is None:
                raise UnknownMethod(kind="rpc", method_name=method)
            want, have = parse_version(version), parse_version(RPC_API_VERSION)
            if want[0] != have[0] or want > have:
                raise InvalidArguments(
                    method_name=method,
                    reason=f"version {version} is newer than this server's {RPC_API_VERSION}",
                )
            fn = getattr(self, method)
            try:
                inspect.signature(fn).bind(ctxt, **kwargs)
            except TypeError as e:
                raise InvalidArguments(method_name=method, reason=str(e)) from None
        except CellsError:
            return defer.fail(Failure())
        self.log.debug("rpc {method} v{version}", method=method, version=version)
        return defer.maybeDeferred(fn, ctxt, **kwargs)

    # -- path helpers ----------------------------------------------------------

    def resolve_cell(self, cell_name: str) -> tuple[str, str]:
        """A full cell path and its direction from a path as a user writes
        it: absolute from this cell (``me!child``) or relative below it."""
        if cell_name == self.my_name:
            return cell_name, DOWN
        if not cell_name.startswith(self.my_name + "!"):
            cell_name = f"{self.my_name}!{cell_name}"
        first = split_path(cell_name)[1]
        if self.state.get_parent_cell(first) is not None:
            return cell_name, UP
        return cell_name, DOWN

    # -- diagnostics (cellsd 1.38) ----------------------------------------------

    @rpc_method("1.38")
    async def ping(self, ctxt: RequestContext, cell_name: str | None = None) -> dict[str, Any]:
        """Round trip to one cell: ``{"cell", "ok", "outcome", "ms", "error"}``."""
        target, direction = self.resolve_cell(cell_name or self.my_name)
        return await self._ping_one(ctxt, target, direction)

    async def _ping_one(self, ctxt: RequestContext, target: str, direction: str) -> dict[str, Any]:
        start = self._monotonic()
        response = await self.runner.send_targeted(
            ctxt, target, "ping", {}, direction=direction, need_response=True
        )
        assert response is not None
        return _ping_row(response, (self._monotonic() - start) * 1000.0)

    @rpc_method("1.38")
    async def ping_all(self, ctxt: RequestContext, up: bool = False) -> list[dict[str, Any]]:
        """Every cell below (or above) this one, this one included: found by
        a broadcast, then each timed by its own round trip."""
        direction = UP if up else DOWN
        start = self._monotonic()
        found = await self.runner.send_broadcast(ctxt, "ping", {}, direction, need_response=True)
        assert found is not None
        rows: list[Deferred[dict[str, Any]]] = []
        for response in found:
            if response.failure:
                elapsed = (self._monotonic() - start) * 1000.0
                rows.append(defer.succeed(_ping_row(response, elapsed)))
            else:
                rows.append(
                    Deferred.fromCoroutine(self._ping_one(ctxt, response.cell_name, direction))
                )
        results = await defer.gatherResults(rows)
        return sorted(results, key=lambda r: r["cell"])

    @rpc_method("1.38")
    async def tree(self, ctxt: RequestContext) -> dict[str, Any]:
        """This cell's view of the tree: every cell below it (from a
        broadcast) with its status (own and aggregated capacities, and each
        of its children's mute state, last-seen age and capacities), and
        each neighbour's state."""
        found = await self.runner.send_broadcast(
            ctxt, "ping", {"detail": True}, DOWN, need_response=True
        )
        assert found is not None
        cells = []
        for response in found:
            row: dict[str, Any] = {
                "cell": response.cell_name,
                "ok": not response.failure,
                "outcome": response.outcome,
            }
            if response.failure:
                row["error"] = _error_text(response)
            else:
                keep = ("children", "is_top", "status")
                row.update({k: v for k, v in response.value.items() if k in keep})
            cells.append(row)
        return {
            "cell": self.my_name,
            "parents": [c.name for c in self.state.get_parent_cells()],
            "neighbours": self._with_health(self.state.get_cell_info_for_neighbors()),
            "cells": sorted(cells, key=lambda r: r["cell"]),
        }

    def _with_health(self, neighbours: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each neighbour with its link ``health`` (up, suspect, down,
        disabled) and ``health_reason``, where the links keep them."""
        link_states = getattr(getattr(self.runner, "links", None), "link_states", None)
        if link_states is None:
            return neighbours
        states = link_states()
        for n in neighbours:
            s = states.get("parents" if n["is_parent"] else "children", {}).get(n["name"], {})
            if "state" in s:
                n["health"], n["health_reason"] = s["state"], s.get("reason")
        return neighbours

    # -- seed methods that answer from the state manager ------------------------

    @rpc_method("1.1")
    def get_cell_info_for_neighbors(self, ctxt: RequestContext) -> list[dict[str, Any]]:
        return self.state.get_cell_info_for_neighbors()

    @rpc_method("1.9")
    def get_capacities(self, ctxt: RequestContext, cell_name: str | None = None) -> dict[str, Any]:
        return self.state.get_capacities(cell_name)


def _error_text(response: Response) -> str:
    exc = response.value
    name = getattr(type(exc), "_remote_of", type(exc)).__name__
    message = getattr(exc, "message", None) or str(exc).split("\n", 1)[0]
    return f"{name}: {message}"


def _ping_row(response: Response, ms: float) -> dict[str, Any]:
    return {
        "cell": response.cell_name,
        "ok": not response.failure,
        "outcome": response.outcome,
        "ms": round(ms, 3),
        "error": _error_text(response) if response.failure else None,
    }
