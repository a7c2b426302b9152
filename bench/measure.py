"""Serial latency and throughput of any call that returns a Deferred."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

Call = Callable[[], "Deferred[Any]"]


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` (0..100) percentile, nearest rank."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


async def serial(call: Call, n: int) -> list[float]:
    """Seconds each of ``n`` calls took, one after the other."""
    samples: list[float] = []
    for _ in range(n):
        start = perf_counter()
        await call()
        samples.append(perf_counter() - start)
    return samples


async def concurrent(call: Call, total: int, in_flight: int) -> float:
    """Seconds ``total`` calls took with ``in_flight`` of them outstanding
    at all times (a new one starts as soon as one answers)."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    start = perf_counter()
    await defer.gatherResults(
        [Deferred.fromCoroutine(worker()) for _ in range(min(in_flight, total))]
    )
    return perf_counter() - start


async def interleaved_serial(calls: Sequence[Call], n: int, blocks: int) -> list[list[float]]:
    """``n`` serial samples per call, taken in alternating blocks so that
    drift in the machine's speed hits every call alike."""
    out: list[list[float]] = [[] for _ in calls]
    per_block = max(1, n // blocks)
    for _ in range(blocks):
        for i, call in enumerate(calls):
            out[i].extend(await serial(call, per_block))
    return out


async def interleaved_rate(
    calls: Sequence[Call], total: int, in_flight: int, runs: int
) -> list[float]:
    """Calls per second for each call: ``runs`` alternating runs of
    ``total / runs`` calls with ``in_flight`` outstanding, added up."""
    per_run = max(1, total // runs)
    seconds = [0.0 for _ in calls]
    for _ in range(runs):
        for i, call in enumerate(calls):
            seconds[i] += await concurrent(call, per_run, in_flight)
    return [per_run * runs / s for s in seconds]
