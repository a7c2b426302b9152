"""Run every benchmark in one process and print each figure with its floor.

Targeted: ``send_targeted(ctxt, target, "ping", {}, need_response=True)``
from the top cell's runner through 1, 2 and 3 hops of a chain
(api-cell -> cell1 -> cell2 -> cell3); serial latency p50/p99 and
throughput with 100 calls in flight. Broadcast: ``send_broadcast(ctxt,
"ping", {}, need_response=True)`` from the top of trees of 8 and 32 cells;
round latency p50/p99 and rounds per second with 10 rounds in flight.

Each cellsd figure is measured interleaved with the same figure for a raw
AMP-over-TLS relay of the same shape (bench/floor.py) and printed as a
ratio: cellsd's time over the floor's, so above 1.00x means cellsd is
slower. Absolute times on a shared machine are noise; the ratio is the
figure.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import twisted
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner
from twisted.python.failure import Failure

from bench.floor import FloorTree
from bench.measure import Call, interleaved_rate, interleaved_serial, percentile
from bench.trees import TOP, CellTree, chain_shape, fanout_shape, paths_of
from cellsd.config import LogSettings
from cellsd.context import RequestContext, get_admin_context
from cellsd.logs import make_observer
from cellsd.messaging.message import (
    BROADCAST,
    TARGETED,
    Response,
    build_message,
    encode_responses,
)
from cellsd.messaging.routing import DOWN

#: The acceptance target: cellsd's 3-hop throughput within this factor of the floor.
TARGET_RATIO = 1.5

#: Broadcast trees: (cells, most children per cell), filled breadth first.
BROADCAST_TREES = ((8, 3), (32, 6))


class Counts:
    """How many calls each figure takes; ``scale`` shrinks them all."""

    def __init__(self, scale: float) -> None:
        def n(value: int) -> int:
            return max(10, int(value * scale))

        self.warmup = n(300)
        self.serial = n(500)
        self.rate_total = n(3000)
        self.in_flight = 100
        self.bc_warmup = n(30)
        self.bc_serial = n(100)
        self.bc_rate_total = n(300)
        self.bc_in_flight = 10


class Report:
    """Prints one line per figure: cellsd, the floor, and their ratio."""

    def out(self, text: str = "") -> None:
        print(text, flush=True)

    def latency(self, label: str, cellsd: list[float], floor: list[float]) -> None:
        for q in (50, 99):
            a, b = percentile(cellsd, q) * 1e3, percentile(floor, q) * 1e3
            self.out(
                f"{label:<26}latency p{q:<3}  cellsd {a:8.2f} ms   floor {b:8.2f} ms"
                f"   ratio {a / b:5.2f}x"
            )

    def rate(self, label: str, unit: str, cellsd: float, floor: float) -> float:
        ratio = floor / cellsd
        self.out(
            f"{label:<26}throughput    cellsd {cellsd:8.0f} {unit}  floor {floor:8.0f} {unit}"
            f"  ratio {ratio:5.2f}x"
        )
        return ratio


def _checked_targeted(runner: Any, ctxt: RequestContext, target: str) -> Call:
    def call() -> Deferred[Any]:
        d = runner.send_targeted(ctxt, target, "ping", {}, need_response=True)
        return d.addCallback(_ok)

    return call


def _ok(response: Response) -> Response:
    if response.failure:
        raise RuntimeError(f"{response.cell_name} failed: {response.value!r}")
    return response


def _checked_broadcast(runner: Any, ctxt: RequestContext, cells: int) -> Call:
    def call() -> Deferred[Any]:
        d = runner.send_broadcast(ctxt, "ping", {}, need_response=True)
        return d.addCallback(_all_ok, cells)

    return call


def _all_ok(responses: list[Response], cells: int) -> list[Response]:
    bad = [r for r in responses if r.failure]
    if bad or len(responses) != cells:
        raise RuntimeError(f"{len(responses)} answers of {cells}, failed: {bad!r}")
    return responses


def _floor_call(floor: FloorTree, header: bytes, body: bytes) -> Call:
    top = floor.top

    def call() -> Deferred[Any]:
        return top.deliver(header, body)

    return call


def big_context(size: int = 3000) -> RequestContext:
    """An admin context whose roles make the message body about ``size`` bytes."""
    roles = [f"role-{i:04d}-member-of-project-group" for i in range(size // 36)]
    return RequestContext(
        user_id="f" * 32, project_id="e" * 32, is_admin=True, roles=["admin", *roles]
    )


def _tracing_setting() -> bool:
    """Whether this cellsd has the ``[log] trace_messages`` setting."""
    return "trace_messages" in attrs.fields_dict(LogSettings)


async def bench_targeted(
    reactor: Any,
    base: Path,
    counts: Counts,
    report: Report,
    suffix: str = "",
    extra: dict[str, dict[str, Any]] | None = None,
    hop_counts: Sequence[int] = (1, 2, 3),
    big: bool = True,
) -> dict[str, float]:
    """Targeted pings down a chain of cells; the 3 KB variant at 3 hops."""
    hops_max = 3
    shape = chain_shape(hops_max)
    tree = CellTree(reactor, base / f"chain{suffix.replace(' ', '-')}", shape, extra)
    await tree.start()
    runner = tree.cell(TOP).runner
    paths = paths_of(shape)
    names = [TOP, *(f"cell{i}" for i in range(1, hops_max + 1))]
    ratios: dict[str, float] = {}
    variants: list[tuple[int, str, RequestContext]] = [
        (h, f"targeted {h} hop{'s' if h > 1 else ''}{suffix}", get_admin_context())
        for h in hop_counts
    ]
    if big:
        variants.append((hops_max, f"targeted {hops_max} hops 3KB{suffix}", big_context()))
    try:
        for hops, label, ctxt in variants:
            target = paths[names[hops]]
            cellsd_call = _checked_targeted(runner, ctxt, target)
            answer: Response = await cellsd_call()
            msg = build_message(
                ctxt,
                TARGETED,
                "ping",
                {},
                DOWN,
                TOP,
                runner.max_hop_count,
                target_cell=target,
                need_response=True,
                time_left=runner.call_timeout,
            )
            header, body = msg.header.to_bytes(), msg.body.to_bytes()
            floor = FloorTree(
                reactor,
                tree.pki,
                chain_shape(hops),
                {names[hops]: encode_responses([answer])},
                broadcast=False,
            )
            await floor.start()
            gc.collect()  # every figure starts from a collected heap
            try:
                floor_call = _floor_call(floor, header, body)
                calls = [cellsd_call, floor_call]
                report.out(
                    f"# {label}: header {len(header)} B, body {len(body)} B, "
                    f"answer {len(encode_responses([answer]))} B"
                )
                await interleaved_rate(calls, counts.warmup, counts.in_flight, 1)
                lat = await interleaved_serial(calls, counts.serial, 10)
                report.latency(label, lat[0], lat[1])
                rates = await interleaved_rate(calls, counts.rate_total, counts.in_flight, 6)
                ratios[label] = report.rate(label, "/s", rates[0], rates[1])
            finally:
                await floor.stop()
    finally:
        await tree.stop()
    return ratios


async def bench_broadcast(
    reactor: Any, base: Path, counts: Counts, report: Report, cells: int, fanout: int
) -> float:
    shape = fanout_shape(cells, fanout)
    tree = CellTree(reactor, base / f"tree{cells}", shape)
    await tree.start()
    label = f"broadcast {cells} cells"
    try:
        runner = tree.cell(TOP).runner
        ctxt = get_admin_context()
        cellsd_call = _checked_broadcast(runner, ctxt, cells)
        responses: list[Response] = await cellsd_call()
        answers = {r.cell_name.rsplit("!", 1)[-1]: encode_responses([r]) for r in responses}
        msg = build_message(
            ctxt,
            BROADCAST,
            "ping",
            {},
            DOWN,
            TOP,
            runner.max_hop_count,
            need_response=True,
            time_left=runner.call_timeout,
        )
        header, body = msg.header.to_bytes(), msg.body.to_bytes()
        floor = FloorTree(reactor, tree.pki, shape, answers, broadcast=True)
        await floor.start()
        gc.collect()  # every figure starts from a collected heap
        try:
            floor_call = _floor_call(floor, header, body)
            calls = [cellsd_call, floor_call]
            depth = max(len(p.split("!")) for p in paths_of(shape).values())
            report.out(
                f"# {label}: {depth} levels, at most {fanout} children per cell; "
                f"{counts.bc_in_flight} rounds in flight for throughput"
            )
            await interleaved_rate(calls, counts.bc_warmup, counts.bc_in_flight, 1)
            lat = await interleaved_serial(calls, counts.bc_serial, 5)
            report.latency(label, lat[0], lat[1])
            rates = await interleaved_rate(calls, counts.bc_rate_total, counts.bc_in_flight, 6)
            return report.rate(label, "rounds/s", rates[0], rates[1])
        finally:
            await floor.stop()
    finally:
        await tree.stop()


def _revision() -> str:
    """The checkout's commit, marked when cellsd/ has uncommitted changes."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cellsd"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in cellsd/' if dirty else ''}"


async def run_all(reactor: Any, base: Path, counts: Counts, report: Report) -> bool:
    report.out(
        f"cellsd bench at {_revision()}: python {platform.python_version()}, "
        f"twisted {twisted.__version__}, {os.cpu_count()} cpus, "
        f"reactor {type(reactor).__name__}; one process"
    )
    report.out(
        f"  targeted: {counts.serial} serial calls, {counts.rate_total} calls with "
        f"{counts.in_flight} in flight; broadcast: {counts.bc_serial} serial rounds, "
        f"{counts.bc_rate_total} rounds with {counts.bc_in_flight} in flight"
    )
    report.out("  ratio = cellsd time / floor time (floor rate / cellsd rate); 1.00x is the floor")
    report.out()
    start = time.perf_counter()
    ratios = await bench_targeted(reactor, base, counts, report)
    traced = ""
    if _tracing_setting():
        # The daemon's default logs no per-message lines; the same 3-hop
        # figures with [log] trace_messages = true (a line per hop at info).
        traced = "targeted 3 hops traced"
        report.out()
        report.out("# the same with [log] trace_messages = true (per-message lines at info)")
        ratios |= await bench_targeted(
            reactor,
            base,
            counts,
            report,
            " traced",
            {"log": {"trace_messages": True}},
            hop_counts=(3,),
            big=False,
        )
    for cells, fanout in BROADCAST_TREES:
        report.out()
        await bench_broadcast(reactor, base, counts, report, cells, fanout)
    report.out()
    three = ratios["targeted 3 hops"]
    held = three <= TARGET_RATIO
    report.out(
        f"target: 3-hop throughput within {TARGET_RATIO:.1f}x of the floor: "
        f"{'HOLDS' if held else 'MISSED'} ({three:.2f}x)"
    )
    if traced:
        report.out(
            f"        with [log] trace_messages = true: {ratios[traced]:.2f}x "
            f"({'holds' if ratios[traced] <= TARGET_RATIO else 'missed'})"
        )
    report.out(f"bench took {time.perf_counter() - start:.0f} s")
    return held


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every call count (0.1 for a smoke run)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    base = Path(tempfile.mkdtemp(prefix="cellsd-bench-"))
    log_file = base / "bench.log"
    globalLogBeginner.beginLoggingTo(
        [make_observer("text", "info", str(log_file))], redirectStandardIO=False
    )
    report = Report()
    outcome: dict[str, Any] = {}

    def done(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()

    def crashed(failure: Failure) -> None:
        outcome["failure"] = failure
        reactor.stop()

    def begin() -> None:
        Deferred.fromCoroutine(run_all(reactor, base, Counts(args.scale), report)).addCallbacks(
            done, crashed
        )

    reactor.callWhenRunning(begin)
    reactor.run()
    problems = _log_problems(log_file)
    if problems:
        print(f"\n{problems} errors logged; see {log_file}", file=sys.stderr)
    if "failure" in outcome:
        outcome["failure"].printTraceback(file=sys.stderr)
        print(f"bench failed; log in {log_file}", file=sys.stderr)
        return 1
    if args.keep or problems:
        print(f"working directory kept: {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _log_problems(log_file: Path) -> int:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return 0
    # Warnings are expected while trees start and stop (links going down,
    # state pushed before a child's link is up); errors are not.
    marks = ("#error]", "#critical]")
    return sum(1 for line in text.splitlines() if any(m in line for m in marks))
