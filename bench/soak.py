"""``python -m bench.soak``: durable delivery under random faults (issue 7).

A correctness run, not a speed benchmark, and never part of the test run:
its figures are counts and times, not ratios to a floor. One ``cellsd run``
process per cell, every link through a FaultProxy (bench/soak_cells.py)::

    api-cell
    ├── mid1 ── leaf1, leaf2
    └── mid2 ── leaf3, leaf4      (each leaf with two simulated hosts)

For ``--seconds`` (60), while faults are injected:

* each leaf's local API takes ``instance_update_at_top`` casts of two
  instances only the top knows (generations going up), and
  ``instance_fault_create_at_top`` casts with unique messages; each cast
  is *accepted* (acknowledged: in the leaf's store), *refused* (a typed
  error) or *unknown* (the connection was lost or no answer came in time:
  it may or may not have been stored);
* stop and start actions go to each leaf's own API for two instances built
  there, so its compute reports every step;
* the top's API runs ``ping_all`` and ``instance_list`` of a random leaf
  every half second (every cell answers, or a typed error row).

Faults, one episode at a time after a random gap of 0.5-2.5 s, seeded by
``--seed``: SIGKILL of a middle cell or a leaf and a restart 0.5-2.5 s
later on its state directory; SIGSTOP of the top, a middle cell or a leaf
and SIGCONT 0.5-2.5 s later; a cut of one link (its FaultProxy closes the
connection; the child redials); a partition of one link (connections
refused for 0.5-2.5 s). The level is drawn first, then a cell in it.

Then the faults and the load stop, one last accepted update is made for
each top-only instance, and the soak waits for the check to hold: every
outbox empty; the top's copy of each leaf's instance equal to the leaf's
(vm_state, task_state, host, generation); each top-only instance at its
last accepted generation; each accepted fault at the top exactly once,
each unknown one at most once, no other.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from bench.measure import percentile
from bench.run import _revision
from bench.soak_cells import TOP, SoakCells
from bench.soak_load import CALL_BOUND, LeafLoad, Ledger, TopCalls, ctxt, sleep, utcnow
from cellsd.client import connect
from cellsd.compute import states as st
from cellsd.errors import CellsError
from cellsd.objects import Flavor
from cellsd.rpc.api import CellsAPI

SHAPE = {TOP: ["mid1", "mid2"], "mid1": ["leaf1", "leaf2"], "mid2": ["leaf3", "leaf4"]}
HOST = {"vcpus": 16, "memory_mb": 32768, "disk_gb": 500}
#: Small intervals, so that a fault heals in seconds.
CELLS = {
    "call_timeout": 3.0,
    "reconnect_max_delay": 1.0,
    "health_down_after": 2.0,
    "health_up_after": 1.0,
    "update_interval": 10.0,
    "outbox_window": 16,
}
#: Instances built in each leaf.
OWNED = 2
TINY = Flavor(id=1, flavorid="1", name="m1.tiny", memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0)
KINDS = ("kill", "stall", "cut", "partition")
DUPLICATED = "more than once"


async def chaos(
    reactor: Any, cells: SoakCells, ledger: Ledger, rng: random.Random, until: float
) -> None:
    """Fault episodes, one at a time, each healed before the next."""
    begun = reactor.seconds()
    others = [n for n in cells.names if n != TOP]
    # A level first, then a cell in it: the middle cells are hit as often
    # as the leaves although there are fewer of them.
    mids = [n for n in others if n not in cells.leaves()]
    levels = {"kill": [mids, cells.leaves()], "stall": [[TOP], mids, cells.leaves()]}
    while reactor.seconds() < until:
        await sleep(reactor, rng.uniform(0.5, 2.5))
        kind, hold = rng.choice(KINDS), rng.uniform(0.5, 2.5)
        at = reactor.seconds() - begun
        if kind == "kill":
            name = rng.choice(rng.choice(levels["kill"]))
            cells.kill(name)
            await sleep(reactor, hold)
            cells.start(name)
        elif kind == "stall":
            name = rng.choice(rng.choice(levels["stall"]))
            cells.pause(name)
            await sleep(reactor, hold)
            cells.resume(name)
        elif kind == "cut":
            name = rng.choice(others)
            cells.proxies[name].cut()
            hold = 0.0
        else:
            name = rng.choice(others)
            proxy = cells.proxies[name]
            proxy.refuse = True
            proxy.cut()
            await sleep(reactor, hold)
            proxy.refuse = False
        ledger.injected[kind] += 1
        ledger.timeline.append(f"{at:6.1f}s {kind:<9} {name:<8} {hold:.1f}s")


def check(cells: SoakCells, loads: Sequence[LeafLoad], ledger: Ledger) -> list[str]:
    """What is not yet as it must end (empty: converged)."""
    problems: list[str] = []
    for name in cells.names:
        waiting = cells.outbox_rows(name)
        if waiting:
            problems.append(f"{name}: {waiting} messages in its outbox")
    fields = ("vm_state", "task_state", "host", "generation")
    for load in loads:
        for uuid in load.owned:
            own = load.row(uuid)
            top = cells.query(TOP, "SELECT * FROM instances WHERE uuid = ?", uuid)
            if not top or [top[0][f] for f in fields] != [own[f] for f in fields]:
                problems.append(f"{load.name} {uuid}: top has {top and dict(top[0])}, owner {own}")
    for uuid, (generation, vm_state) in ledger.foreign.items():
        top = cells.query(TOP, "SELECT generation, vm_state FROM instances WHERE uuid = ?", uuid)
        if not top or tuple(top[0]) != (generation, vm_state):
            problems.append(f"top-only {uuid}: top has {top and tuple(top[0])}, want {generation}")
    counts = faults_at_top(cells)
    missing = [m for m in ledger.faults if m not in counts]
    twice = [m for m, n in counts.items() if n > 1]
    strays = [m for m in counts if m not in ledger.faults and m not in ledger.unknown_faults]
    for what, found in (("not at the top", missing), (DUPLICATED, twice), ("stray", strays)):
        if found:
            problems.append(f"{what} faults: {len(found)}, e.g. {sorted(found)[:3]}")
    return problems


def checked(cells: SoakCells, loads: Sequence[LeafLoad], ledger: Ledger) -> list[str]:
    try:
        return check(cells, loads, ledger)
    except sqlite3.OperationalError as e:  # a store being opened after a restart
        return [f"a store cannot be read yet: {e}"]


def top_received(cells: SoakCells) -> int:
    """Must-deliver messages the top has applied (their uuids are kept)."""
    return int(cells.query(TOP, "SELECT count(*) FROM received_messages")[0][0])


def faults_at_top(cells: SoakCells) -> collections.Counter[str]:
    rows = cells.query(TOP, "SELECT message FROM instance_faults WHERE message LIKE 'soak-%'")
    return collections.Counter(str(r[0]) for r in rows)


async def build_owned(reactor: Any, cells: SoakCells, api: CellsAPI) -> dict[str, list[str]]:
    """OWNED instances built in each leaf from the top, active at both."""
    owned = {leaf: [str(uuidlib.uuid4()) for _ in range(OWNED)] for leaf in cells.leaves()}
    for leaf, uuids in owned.items():
        for uuid in uuids:
            inst = {"uuid": uuid, "user_id": "u1", "project_id": "p1", "flavor": TINY}
            hints = {"target_cell": cells.paths[leaf]}
            await api.build_instances(
                ctxt(),
                instances=[inst],
                image={"id": "img-1"},
                filter_properties={"instance_type": TINY, "scheduler_hints": hints},
                admin_password=None,
                injected_files=[],
                requested_networks=None,
                security_groups=["default"],
                block_device_mapping=[],
                legacy_bdm=False,
            )
    deadline = time.monotonic() + 60
    for leaf, uuids in owned.items():
        for uuid in uuids:
            while True:
                rows = cells.query(TOP, "SELECT vm_state FROM instances WHERE uuid = ?", uuid)
                if rows and rows[0][0] == st.ACTIVE:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{uuid} was not built in {leaf}: {rows and tuple(rows[0])}")
                await sleep(reactor, 0.1)
    return owned


async def wait_until_up(reactor: Any, cells: SoakCells, since: datetime.datetime) -> None:
    """Every cell answers a ping from the top, and every leaf's compute has
    finished starting (each host heartbeated since ``since``)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            api = await connect(reactor, cells.files[TOP].api, call_timeout=5.0)
            try:
                rows = await api.ping_all(ctxt())
            finally:
                api.transport.close()
            up = len(rows) == len(cells.names) and all(r["ok"] for r in rows)
            for leaf in cells.leaves():
                seen = cells.query(leaf, "SELECT last_seen_up FROM services")
                times = [datetime.datetime.fromisoformat(r[0]) for r in seen if r[0]]
                up = up and len(times) == 2 and min(times) >= since
            if up:
                return
        except (CellsError, OSError, sqlite3.Error, LookupError, ValueError):
            pass
        if time.monotonic() > deadline or cells.exited():
            raise RuntimeError(f"the tree did not come up (exited: {cells.exited()})")
        await sleep(reactor, 0.3)


async def soak(reactor: Any, cells: SoakCells, args: argparse.Namespace) -> bool:
    out = print
    rng = random.Random(args.seed)
    ledger = Ledger()
    since = utcnow()
    for name in cells.names:
        cells.start(name)
    await wait_until_up(reactor, cells, since)
    api = await connect(reactor, cells.files[TOP].api, call_timeout=30.0)
    try:
        owned = await build_owned(reactor, cells, api)
    finally:
        api.transport.close()
    loads = [
        LeafLoad(reactor, cells, leaf, owned[leaf], ledger, args.pause) for leaf in cells.leaves()
    ]
    top = TopCalls(reactor, cells, ledger, random.Random(args.seed + 1))
    applied = top_received(cells)
    started = reactor.seconds()
    running = [d for load in loads for d in load.start()]
    running.append(Deferred.fromCoroutine(top.run()))
    if args.no_faults:
        await sleep(reactor, args.seconds)
    else:
        await chaos(reactor, cells, ledger, rng, started + args.seconds)
    for load in loads:
        load.running = False
    top.running = False
    await defer.gatherResults(running, consumeErrors=True)
    loaded = reactor.seconds() - started
    ledger.applied_at_top = top_received(cells) - applied
    stopped = time.monotonic()
    # One last accepted update per top-only instance: the state to end in.
    for load in loads:
        for uuid in load.foreign:
            while await load.update(uuid) != "accepted":
                await sleep(reactor, 0.2)
        load.drop()
    problems = checked(cells, loads, ledger)
    while problems and time.monotonic() - stopped < args.converge_timeout:
        if any(p.startswith(DUPLICATED) for p in problems):
            break  # applied twice: no waiting undoes that
        await sleep(reactor, 0.25)
        problems = checked(cells, loads, ledger)
    converged = time.monotonic() - stopped
    statuses = {name: await threads.deferToThread(cells.status, name) for name in cells.names}
    report(out, cells, ledger, statuses, args, loaded, converged, problems)
    return not problems


def report(
    out: Callable[[str], None],
    cells: SoakCells,
    ledger: Ledger,
    statuses: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    loaded: float,
    converged: float,
    problems: list[str],
) -> None:
    o = ledger.outcomes
    accepted = ledger.accepted_reports()
    out(f"  load and faults for {loaded:.1f} s")
    out(
        f"reports accepted           {accepted:7d}  ({accepted / loaded:.0f}/s): "
        f"{o['update accepted']} instance updates, {o['fault accepted']} faults"
    )
    others = {k: v for k, v in sorted(o.items()) if "accepted" not in k}
    out(f"  other outcomes           {others}")
    out(f"  compute actions at the leaves {ledger.actions} (each reported up step by step)")
    out(
        f"  messages applied at the top during the load {ledger.applied_at_top} "
        f"({ledger.applied_at_top / loaded:.0f}/s: these reports, the compute's, anti-entropy's)"
    )
    out(f"  slowest cast answer      {ledger.slowest:7.2f} s  (bound {CALL_BOUND:.0f} s)")
    out(f"calls from the top         {dict(sorted(ledger.top_rows.items()))}")
    out(f"  slowest                  {ledger.top_slowest:7.2f} s")
    out(f"faults injected            {dict(sorted(ledger.injected.items()))}")
    if args.verbose:
        for line in ledger.timeline:
            out(f"  {line}")
    applied = {
        str(r[0]): datetime.datetime.fromisoformat(r[1])
        for r in cells.query(
            TOP, "SELECT message, created_at FROM instance_faults WHERE message LIKE 'soak-%'"
        )
    }
    delays = [(applied[m] - t).total_seconds() for m, t in ledger.faults.items() if m in applied]
    if delays:
        out(
            f"accepted -> at the top     p50 {percentile(delays, 50) * 1e3:7.0f} ms   "
            f"p99 {percentile(delays, 99) * 1e3:7.0f} ms   max {max(delays):6.2f} s  "
            f"(faults: acknowledged by the leaf -> row written at the top)"
        )
    out(f"converged after            {converged:7.1f} s  (from the moment faults and load stopped)")
    counts = faults_at_top(cells)
    unknown_arrived = sum(1 for m in ledger.unknown_faults if m in counts)
    out(
        f"faults at the top          {sum(counts.values())}: accepted {len(ledger.faults)}, "
        f"unknown {len(ledger.unknown_faults)} ({unknown_arrived} of them arrived)"
    )
    dupes = {name: s["outbox"]["duplicates"] for name, s in statuses.items() if s.get("outbox")}
    out(
        f"duplicates dropped         top {dupes.get(TOP, 0)}; "
        + ", ".join(f"{n} {v}" for n, v in dupes.items() if n != TOP)
        + " (since each cell's last start)"
    )
    rows = {name: cells.outbox_rows(name) for name in cells.names}
    gauges = {name: sum(s["outbox"]["waiting"].values()) for name, s in statuses.items()}
    out(f"final outbox depths        store rows {rows}")
    out(f"                           gauges     {gauges}")
    out(f"errors logged              {cells.log_problems() or 'none'}")
    if problems or any(gauges.values()):
        out("CHECK FAILED:")
        for p in problems[:20]:
            out(f"  {p}")
        if any(gauges.values()):
            out("  an outbox gauge is not 0 although its store is empty")
    else:
        out(
            "CHECK HOLDS: every accepted update and fault reached the top exactly once; "
            "every instance at its owner's state and generation; every outbox empty"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="load and faults (60)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the faults (1)")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.25,
        help="seconds between two casts of one loop (0.25: a steady load, not a flood)",
    )
    parser.add_argument("--converge-timeout", type=float, default=90.0)
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--no-faults", action="store_true", help="the same load without faults (a baseline)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every fault injected")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    base = Path(tempfile.mkdtemp(prefix="sk", dir="/tmp"))
    hosts = {
        leaf: [{"name": f"host{i}", **HOST} for i in (1, 2)]
        for kids in SHAPE.values()
        for leaf in kids
        if leaf not in SHAPE
    }
    cells = SoakCells(base, SHAPE, CELLS, hosts, args.seed)
    faults = "no faults" if args.no_faults else f"faults seeded {args.seed}"
    print(
        f"cellsd soak at {_revision()}: {args.seconds:.0f} s of load, {faults}; "
        f"{len(cells.names)} cells, one process each, a FaultProxy on every link"
    )
    print("  a correctness run: the figures are counts and times, not ratios to a floor")
    outcome: dict[str, Any] = {}

    def done(result: Any) -> None:
        outcome["ok"] = result
        reactor.stop()

    def crashed(failure: Failure) -> None:
        outcome["failure"] = failure
        reactor.stop()

    reactor.callWhenRunning(
        lambda: Deferred.fromCoroutine(soak(reactor, cells, args)).addCallbacks(done, crashed)
    )
    try:
        reactor.run()
    finally:
        cells.stop_all()
    if "failure" in outcome:
        outcome["failure"].printTraceback(file=sys.stderr)
    ok = bool(outcome.get("ok"))
    if args.keep or not ok:
        print(f"working directory kept: {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
