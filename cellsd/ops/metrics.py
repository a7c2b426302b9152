"""Prometheus metrics of one cell, and the record of failed messages.

:class:`CellMetrics` is the runner's observer
(:class:`~cellsd.messaging.runner.RunnerObserver`): it counts messages
sent, received and forwarded by type, method and neighbour, times the calls
this cell makes, counts broadcasts answered only in part and the cells that
timed out, and keeps the last failed messages for the status page.

Everything that already exists as state is read when Prometheus scrapes, by
:class:`LiveCollector`: the runner's counters (duplicates dropped …), each
neighbour's link (up, live links, reconnects, refused handshakes, calls in
flight) and health (``cellsd_neighbour_health{neighbour, direction, state}``:
1 for its state, 0 for the others), and each known cell's mute state,
last-seen age and capacities.

Each cell has its own :class:`~prometheus_client.CollectorRegistry`, never
the global one, so several cells in one process (tests, workers) do not mix.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cellsd.links.health import Health
from cellsd.messaging.runner import MessageRunner, RunnerObserver
from cellsd.state import CellState, CellStateManager

__all__ = ["CONTENT_TYPE_LATEST", "CellMetrics", "LiveCollector", "error_text"]

#: Seconds; a call inside a cell tree takes from a millisecond to the deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: Runner counters and what each counts (runner.stats keys).
RUNNER_STATS = {
    "received": "Messages received from neighbours.",
    "forwarded": "Messages handed to a neighbour (made here or passed on).",
    "executed": "Messages whose method ran in this cell.",
    "duplicates": "Messages dropped (or answered from the first arrival) as duplicates.",
    "timeouts": "Waits for a neighbour or a method that ran out of time.",
    "unreachable": "Messages not sent because no link to the next hop was up.",
    "outcome_unknown": "Messages sent whose link was lost before the answer (outcome unknown).",
    "failures": "Methods that failed in this cell.",
}


#: The values of cellsd_neighbour_health's ``state`` label.
HEALTH_STATES = tuple(h.value for h in Health)


class CellParts(Protocol):
    """What metrics read of a cell (cellsd.service.Cell has these)."""

    @property
    def runner(self) -> MessageRunner: ...
    @property
    def state(self) -> CellStateManager: ...
    @property
    def links(self) -> Any: ...


def error_text(value: Any) -> str:
    """``Class: message`` of a failure Response's value (an exception, or its
    wire form when it was not rebuilt)."""
    if isinstance(value, BaseException):
        cls = getattr(type(value), "_remote_of", type(value))
        message = getattr(value, "message", None) or str(value).split("\n", 1)[0]
        return f"{cls.__name__}: {message}"
    if isinstance(value, Mapping):
        return f"{value.get('class', 'Error')}: {value.get('message', '')}"
    return str(value)


def error_class(value: Any) -> str:
    return error_text(value).split(":", 1)[0]


def ram_disk_free_mb(capacities: Mapping[str, Any]) -> dict[str, float]:
    """Free RAM and disk (MB) from Nova-shaped capacities
    (``{"ram_free": {"total_mb": N, …}, "disk_free": {…}}``); absent keys
    are left out."""
    out: dict[str, float] = {}
    for key in ("ram_free", "disk_free"):
        part = capacities.get(key)
        total = part.get("total_mb") if isinstance(part, Mapping) else None
        if isinstance(total, int | float) and not isinstance(total, bool):
            out[key] = float(total)
    return out


OUTBOX_STATS = {
    "queued": "Must-deliver messages written to the outbox.",
    "confirmed": "Outbox messages a parent confirmed.",
    "send_failures": "Outbox sends that failed (kept for a resend).",
    "refused_full": "Must-deliver messages refused because the outbox was full.",
    "duplicates": "Must-deliver messages received again and dropped.",
}


class LiveCollector:
    """Reads a cell's state when Prometheus scrapes (nothing is copied)."""

    def __init__(self, cell: CellParts) -> None:
        self.cell = cell

    def describe(self) -> list[Metric]:
        # Names are fixed, but label values come from live state: no
        # description up front (the registry then does not call collect()).
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._runner()
        yield from self._outbox()
        yield from self._builds()
        yield from self._links()
        yield from self._cells()

    def _runner(self) -> Iterator[Metric]:
        stats = self.cell.runner.stats
        for key, doc in RUNNER_STATS.items():
            yield CounterMetricFamily(f"cellsd_runner_{key}", doc, value=stats.get(key, 0))

    def _outbox(self) -> Iterator[Metric]:
        outbox = getattr(self.cell.runner, "outbox", None)
        if outbox is None:
            return
        waiting = GaugeMetricFamily(
            "cellsd_outbox_messages",
            "Must-deliver messages in the store waiting for the parent's confirmation.",
            labels=["neighbour"],
        )
        for name in outbox.parents():
            waiting.add_metric([name], float(outbox.depths.get(name, 0)))
        yield waiting
        yield GaugeMetricFamily(
            "cellsd_outbox_limit", "Messages the outbox may hold.", value=outbox.limit
        )
        for key in ("queued", "confirmed", "send_failures", "refused_full", "duplicates"):
            yield CounterMetricFamily(
                f"cellsd_outbox_{key}",
                OUTBOX_STATS[key],
                value=outbox.stats.get(key, 0),
            )

    def _builds(self) -> Iterator[Metric]:
        """Builds accepted here and not yet placed or failed (they are in
        the store, resumed after a restart, and bounded by outbox_limit)."""
        builds = getattr(self.cell, "builds", None)
        if builds is None:
            return
        yield GaugeMetricFamily(
            "cellsd_builds_pending",
            "Builds this cell accepted and has not yet placed or failed.",
            value=float(builds.pending_count),
        )
        yield CounterMetricFamily(
            "cellsd_builds_resumed",
            "Builds scheduled again after a restart.",
            value=float(builds.resumed),
        )

    def _links(self) -> Iterator[Metric]:
        link_states = getattr(self.cell.links, "link_states", None)
        if link_states is None:
            return
        states = link_states()
        labels = ["neighbour", "direction"]
        up = GaugeMetricFamily(
            "cellsd_link_up", "1 when a link to the neighbour is up.", labels=labels
        )
        live = GaugeMetricFamily("cellsd_link_live", "Live links to the neighbour.", labels=labels)
        reconnects = CounterMetricFamily(
            "cellsd_link_reconnects", "Times the neighbour's link came back.", labels=labels
        )
        refused = CounterMetricFamily(
            "cellsd_link_refused_handshakes",
            "Connections refused for the certificate name they presented.",
            labels=labels,
        )
        failed = CounterMetricFamily(
            "cellsd_link_failed_attempts", "Failed attempts to dial a parent.", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "cellsd_link_calls_in_flight",
            "Messages sent on the neighbour's links and not yet answered (queue depth).",
            labels=labels,
        )
        health = GaugeMetricFamily(
            "cellsd_neighbour_health",
            "1 for the neighbour's health state (up, suspect, down, disabled), 0 for the others.",
            labels=[*labels, "state"],
        )
        outstanding = self._outstanding()
        for direction, group in (("parent", "parents"), ("child", "children")):
            for name, s in states.get(group, {}).items():
                values = [name, direction]
                up.add_metric(values, 1.0 if s.get("up") else 0.0)
                live.add_metric(values, float(s.get("links", 0)))
                reconnects.add_metric(values, float(s.get("reconnects", 0)))
                refused.add_metric(values, float(s.get("refused", 0)))
                failed.add_metric(values, float(s.get("failed_attempts", 0)))
                in_flight.add_metric(values, float(outstanding.get((name, direction), 0)))
                if "state" in s:
                    for state in HEALTH_STATES:
                        health.add_metric([*values, state], 1.0 if s["state"] == state else 0.0)
        unknown = CounterMetricFamily(
            "cellsd_link_refused_unknown",
            "Connections refused before they matched a configured neighbour, by the"
            " name their certificate presented (not verified).",
            labels=["presented"],
        )
        for presented, count in states.get("refused_unknown", {}).items():
            unknown.add_metric([presented], float(count))
        yield from (up, live, reconnects, refused, failed, in_flight, health, unknown)
        yield from self._handshakes(states.get("handshakes"))

    def _handshakes(self, handshakes: dict[str, int] | None) -> Iterator[Metric]:
        """The listener's connections not yet authenticated (cellsd.links.guard)."""
        if handshakes is None:
            return
        yield GaugeMetricFamily(
            "cellsd_listener_pending_handshakes",
            "Connections to [cells] listen not yet authenticated as a child.",
            value=float(handshakes.get("pending", 0)),
        )
        closed = CounterMetricFamily(
            "cellsd_listener_unauthenticated_closed",
            "Connections closed before authenticating: timed_out (handshake_timeout) or"
            " evicted (max_pending_handshakes).",
            labels=["reason"],
        )
        for reason in ("timed_out", "evicted"):
            closed.add_metric([reason], float(handshakes.get(reason, 0)))
        yield closed

    def _outstanding(self) -> dict[tuple[str, str], int]:
        """AMP calls awaiting an answer per neighbour. AMP keeps them in
        ``_outstandingRequests`` (no public accessor); absent, we count 0."""
        out: dict[tuple[str, str], int] = {}
        links = getattr(self.cell.links, "links", None)
        for proto in links() if links is not None else []:
            key = (str(proto.neighbour), "parent" if proto.is_parent else "child")
            out[key] = out.get(key, 0) + len(getattr(proto, "_outstandingRequests", {}))
        return out

    def _cells(self) -> Iterator[Metric]:
        state = self.cell.state
        mute = GaugeMetricFamily("cellsd_cell_mute", "1 when a child is mute.", labels=["cell"])
        age = GaugeMetricFamily(
            "cellsd_cell_last_seen_age_seconds",
            "Seconds since the cell last sent its capabilities or capacities.",
            labels=["cell"],
        )
        capacity = GaugeMetricFamily(
            "cellsd_cell_free_mb",
            "Free RAM or disk a cell reports (its own and its children's).",
            labels=["cell", "resource"],
        )
        cells: list[CellState] = [
            state.get_my_state(),
            *state.get_parent_cells(),
            *state.get_child_cells(),
        ]
        for cell in cells:
            if not cell.is_me and not cell.is_parent:
                mute.add_metric([cell.name], 1.0 if state.is_mute(cell) else 0.0)
            seen = state.last_seen_age(cell)
            if seen is not None and not cell.is_me:
                age.add_metric([cell.name], seen)
            caps = state.get_our_capacities() if cell.is_me else cell.capacities
            for resource, mb in ram_disk_free_mb(caps).items():
                capacity.add_metric([cell.name, resource], mb)
        yield from (mute, age, capacity)


class CellMetrics(RunnerObserver):
    """The metrics of one cell and its record of failed messages.

    Install with :meth:`install` (it becomes the runner's observer). ``wall``
    gives the wall-clock time stamped on failure records.
    """

    log = Logger()

    def __init__(
        self,
        cell: CellParts,
        failures_kept: int = 50,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cell = cell
        self.wall = wall
        self.registry = CollectorRegistry()
        self.failures: deque[dict[str, Any]] = deque(maxlen=failures_kept)
        r = self.registry
        message_labels = ["kind", "method", "neighbour"]
        self.sent = Counter(
            "cellsd_messages_sent",
            "Messages made in this cell and handed to a neighbour.",
            message_labels,
            registry=r,
        )
        self.forwarded = Counter(
            "cellsd_messages_forwarded",
            "Messages from another cell passed on to a neighbour.",
            message_labels,
            registry=r,
        )
        self.received = Counter(
            "cellsd_messages_received",
            "Messages received from a neighbour.",
            message_labels,
            registry=r,
        )
        self.call_seconds = Histogram(
            "cellsd_call_seconds",
            "Time from sending a message made here to its whole answer.",
            ["kind", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.partial = Counter(
            "cellsd_broadcast_partial",
            "Broadcasts answered with at least one cell failing or missing.",
            ["method"],
            registry=r,
        )
        self.cell_timeouts = Counter(
            "cellsd_cell_timeouts",
            "Cells that did not answer a call made here in time.",
            ["cell"],
            registry=r,
        )
        self.failed = Counter(
            "cellsd_message_failures",
            "Failure answers seen here, by error class.",
            ["kind", "method", "error"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "cellsd_store_seconds",
            "Time of one store transaction, queueing for a pool thread included.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(LiveCollector(cell))

    def install(self, runner: MessageRunner, store: Any = None, clock: Any = None) -> None:
        """Observe ``runner``; time ``store`` transactions when there is one."""
        runner.observer = self
        if store is not None and clock is not None:
            self.instrument_store(store, clock)

    # -- RunnerObserver ----------------------------------------------------------

    def message_received(self, kind: str, method: str, neighbour: str) -> None:
        self.received.labels(kind, method, neighbour).inc()

    def message_sent(self, kind: str, method: str, neighbour: str, forwarded: bool) -> None:
        (self.forwarded if forwarded else self.sent).labels(kind, method, neighbour).inc()

    def call_finished(self, kind: str, method: str, seconds: float, responses: list[Any]) -> None:
        self.call_seconds.labels(kind, method).observe(seconds)
        failures = [r for r in responses if r.failure]
        if kind == "broadcast" and failures:
            self.partial.labels(method).inc()
        for r in failures:
            if error_class(r.value) == "CellTimeout":
                self.cell_timeouts.labels(r.cell_name).inc()

    def message_failed(self, kind: str, method: str, uuid: str, path: str, response: Any) -> None:
        error = error_text(response.value)
        self.failed.labels(kind, method, error.split(":", 1)[0]).inc()
        self.failures.append(
            {
                "time": self.wall(),
                "uuid": uuid,
                "kind": kind,
                "method": method,
                # where the message was made (or this cell, for a cast
                # passing through) and the full path of the cell that failed
                "seen_at": path,
                "path": response.cell_name,
                "error": error,
            }
        )

    # -- the store ---------------------------------------------------------------

    def instrument_store(self, store: Any, clock: IReactorTime) -> bool:
        """Time every transaction of a :class:`cellsd.store.CellStore`.

        The store has no observer hook of its own yet; this wraps its one
        entry point to the thread pool (``StoreCore._submit``). Returns False,
        and measures nothing, for a store without it.
        """
        submit = getattr(store, "_submit", None)
        if submit is None:
            self.log.info("store latency not measured: the store has no _submit")
            return False
        histogram = self.store_seconds

        def timed(*args: Any, **kwargs: Any) -> Deferred[Any]:
            start = clock.seconds()
            d: Deferred[Any] = submit(*args, **kwargs)

            def done(result: Any, outcome: str) -> Any:
                histogram.labels(outcome).observe(clock.seconds() - start)
                return result

            return d.addCallbacks(done, done, callbackArgs=("ok",), errbackArgs=("error",))

        store._submit = timed
        return True

    # -- exposition ----------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text format of every metric of this cell."""
        return generate_latest(self.registry)
