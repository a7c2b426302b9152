"""Fault scenarios between real ``cellsd run`` processes (issue 7, item 6).

::

    api-cell
    ├── child-cell1   (its link crosses a FaultProxy)
    └── child-cell2

child-cell1's ``[[parents]] endpoint`` points at a
:class:`cellsd.testing_faults.FaultProxy` in this test process, which
forwards to api-cell's ``[cells] listen`` port and cuts the link on command.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cellsd.testing_faults import FaultProxy
from tests.integration.cluster import Cluster, short_tempdir

pytestmark = pytest.mark.integration

TREE = {"api-cell": ["child-cell1", "child-cell2"]}
CALL_TIMEOUT = 3.0
#: Interpreter start-up, import and printing of one cellsctl run.
SLACK = 6.0


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[Cluster, FaultProxy]]:
    extra = {"cells": {"call_timeout": CALL_TIMEOUT, "reconnect_max_delay": 1.0}}
    with short_tempdir() as base, Cluster(base, TREE, extra) as cluster:
        port = cluster.listen_port("api-cell")
        with FaultProxy(port) as proxy:
            config = cluster.cells["child-cell1"].config
            text = config.read_text()
            assert f"tcp:127.0.0.1:{port}" in text
            config.write_text(text.replace(f"tcp:127.0.0.1:{port}", f"tcp:127.0.0.1:{proxy.port}"))
            cluster.start_all()
            cluster.wait_until_tree_answers("api-cell", 3)
            yield cluster, proxy


def ping_all(cluster: Cluster) -> tuple[float, list[dict[str, Any]]]:
    """One ``cellsctl ping --all`` from api-cell: seconds taken and rows
    (a hang raises subprocess.TimeoutExpired)."""
    start = time.monotonic()
    result = cluster.cellsctl("api-cell", "ping", "--all", "--json", timeout=CALL_TIMEOUT + SLACK)
    assert result.returncode in (0, 1), result.stderr
    return time.monotonic() - start, json.loads(result.stdout)


def test_link_flapping_under_load(proxied: tuple[Cluster, FaultProxy]) -> None:
    """Injected: child-cell1's link is cut every 0.5 s for 8 s while four
    clients keep broadcasting pings. Seen: every call answers within the
    deadline (no hang); child-cell1's row is ok or a clear CellUnreachable
    (not sent), CellOutcomeUnknown (sent, link cut before the answer) or
    CellTimeout; child-cell2 and api-cell are always ok; once the
    flapping stops the whole tree answers again."""
    cluster, proxy = proxied
    stop = threading.Event()

    def flap() -> None:
        while not stop.wait(0.5):
            proxy.cut()

    def load() -> list[tuple[float, list[dict[str, Any]]]]:
        out = []
        while not stop.is_set():
            out.append(ping_all(cluster))
        return out

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        time.sleep(8)
        stop.set()
        runs = [run for f in futures for run in f.result()]
    flapper.join()

    assert len(runs) >= 4
    assert proxy.stats["cuts"] >= 10
    outcomes: dict[str, int] = {}
    for seconds, rows in runs:
        assert seconds < CALL_TIMEOUT + SLACK
        by_cell = {r["cell"]: r for r in rows}
        assert by_cell["api-cell"]["ok"], rows
        assert by_cell["api-cell!child-cell2"]["ok"], rows
        flapping = by_cell["api-cell!child-cell1"]
        kind = "ok" if flapping["ok"] else flapping["error"].split(":")[0]
        assert kind in ("ok", "CellUnreachable", "CellOutcomeUnknown", "CellTimeout"), flapping
        expected = {"ok": "ok", "CellUnreachable": "unreachable"}.get(kind, "unknown")
        assert flapping["outcome"] == expected, flapping
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert proxy.stats["accepted"] >= 2  # the child redialed through the proxy
    cluster.wait_until_tree_answers("api-cell", 3, timeout=20)


def test_refused_then_healed(proxied: tuple[Cluster, FaultProxy]) -> None:
    """Injected: the link is cut and new connections are refused. Seen: a
    ping answers at once with child-cell1 CellUnreachable (its link is
    gone: no waiting for the deadline) and the reason names its health;
    when connections are allowed again the tree heals."""
    cluster, proxy = proxied
    proxy.refuse = True
    proxy.cut()
    try:
        deadline = time.monotonic() + 10
        while True:
            seconds, rows = ping_all(cluster)
            row = {r["cell"]: r for r in rows}["api-cell!child-cell1"]
            if not row["ok"] and row["error"].startswith("CellUnreachable"):
                break
            assert time.monotonic() < deadline, rows
        assert "child-cell1 is " in row["error"], row
        assert seconds < SLACK, seconds  # failed fast, not after CALL_TIMEOUT
    finally:
        proxy.refuse = False
    cluster.wait_until_tree_answers("api-cell", 3, timeout=20)
