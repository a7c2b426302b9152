"""A connection flood on a real cell's listener (issue 7, item 6).

One ``cellsd run`` process, api-cell, listens for its child child-cell1
with ``[cells] handshake_timeout = 2`` and the default
``max_pending_handshakes`` (64). The test opens 200 TCP connections to
that port that never send a byte, then starts child-cell1.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.integration.cluster import Cluster, short_tempdir

pytestmark = pytest.mark.integration

PARENT, CHILD = "api-cell", "child-cell1"
FLOOD = 200
HANDSHAKE_TIMEOUT = 2.0


def _closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """Whether the peer closed ``sock`` (EOF or reset) within ``wait`` s."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_flood_of_idle_connections_does_not_keep_a_child_out() -> None:
    """Injected: 200 idle TCP connections to api-cell's listener (more than
    three times max_pending_handshakes), held open while child-cell1
    starts. Seen: child-cell1 links up and ``cellsctl ping`` reaches it
    through api-cell; every idle connection is closed by api-cell within
    the handshake deadline (plus slack); api-cell's log says why, naming
    both config keys; api-cell is still running."""
    extra = {"cells": {"call_timeout": 5, "handshake_timeout": HANDSHAKE_TIMEOUT}}
    with short_tempdir() as base, Cluster(base, {PARENT: [CHILD]}, extra) as cluster:
        cluster.start(PARENT)
        cluster.wait_until_listening(PARENT)
        port = cluster.listen_port(PARENT)
        flood = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(FLOOD)]
        try:
            start = time.monotonic()
            cluster.start(CHILD)
            cluster.wait_until_tree_answers(PARENT, 2, timeout=30)
            result = cluster.cellsctl(PARENT, "ping", CHILD, "--json", timeout=20)
            assert result.returncode == 0, result.stdout + result.stderr
            (row,) = json.loads(result.stdout)
            assert row["ok"] is True, row

            # Every idle connection is closed by the parent: the oldest were
            # evicted as newer ones came, the rest at the deadline.
            deadline = start + HANDSHAKE_TIMEOUT + 10
            still_open = [
                s for s in flood if not _closed_by_peer(s, max(0.05, deadline - time.monotonic()))
            ]
            assert still_open == [], f"{len(still_open)} idle connections still open"
        finally:
            for s in flood:
                s.close()
        log = cluster.wait_for_log(PARENT, "[cells] handshake_timeout")
        assert "closed an unauthenticated connection from 127.0.0.1:" in log
        assert "[cells] max_pending_handshakes" in log
        assert "(sent nothing)" in log
        assert f"link to child {CHILD} is up" in log
        assert cluster.procs[PARENT].poll() is None, cluster.logs()
