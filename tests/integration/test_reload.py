"""SIGHUP reloads a running ``cellsd run``'s configuration (cellsd.ops.reload).

::

    api-cell
    ├── child-cell1
    └── child-cell2   (not in api-cell's file at start; added, then removed)
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from tests.integration.cluster import Cluster, short_tempdir

pytestmark = pytest.mark.integration

TREE = {"api-cell": ["child-cell1", "child-cell2"]}
CHILD2 = '[[children]]\nname = "child-cell2"\n'


def tree_view(cluster: Cluster) -> dict[str, Any]:
    result = cluster.cellsctl("api-cell", "tree", "--json", timeout=30)
    assert result.returncode in (0, 1), result.stderr
    view: dict[str, Any] = json.loads(result.stdout)
    return view


def neighbours(view: dict[str, Any]) -> dict[str, str | None]:
    return {n["name"]: n.get("health") for n in view["neighbours"]}


def answering(view: dict[str, Any]) -> list[str]:
    return sorted(r["cell"] for r in view["cells"] if r["ok"])


def test_sighup_adds_then_removes_a_child() -> None:
    """Injected: api-cell starts without child-cell2 in its file (child-cell2
    dials it and is refused); [[children]] child-cell2 is added to the file
    and api-cell gets SIGHUP; later it is removed again and SIGHUP sent.
    Seen: api-cell's log reports each reload; ``cellsctl tree --json``
    shows child-cell2 as a neighbour that is up and answering, and
    child-cell1's link never dropped; after the removal child-cell2 is gone
    from the tree and the process is still running."""
    extra = {"cells": {"call_timeout": 3.0, "reconnect_max_delay": 0.5}}
    with short_tempdir() as base, Cluster(base, TREE, extra) as cluster:
        config = cluster.cells["api-cell"].config
        full = config.read_text()
        assert CHILD2 in full
        config.write_text(full.replace(CHILD2, ""))
        cluster.start_all()
        cluster.wait_for_log("api-cell", "link to child child-cell1 is up", timeout=30)
        cluster.wait_for_log("api-cell", "refused a link", timeout=30)  # child-cell2, unknown

        since = len(cluster.log_text("api-cell"))
        config.write_text(full)
        cluster.procs["api-cell"].send_signal(signal.SIGHUP)
        log = cluster.wait_for_log("api-cell", "configuration reloaded", since)
        assert "added (joining until their link is up): child child-cell2" in log
        cluster.wait_for_log("api-cell", "link to child child-cell2 is up", since)
        view = tree_view(cluster)
        assert neighbours(view) == {"child-cell1": "up", "child-cell2": "up"}
        assert answering(view) == ["api-cell", "api-cell!child-cell1", "api-cell!child-cell2"]
        assert "link to child child-cell1 is down" not in cluster.log_text("api-cell")

        since = len(cluster.log_text("api-cell"))
        config.write_text(full.replace(CHILD2, ""))
        cluster.procs["api-cell"].send_signal(signal.SIGHUP)
        cluster.wait_for_log("api-cell", "child child-cell2 removed (1 links closed)", since)
        view = tree_view(cluster)
        assert neighbours(view) == {"child-cell1": "up"}
        assert answering(view) == ["api-cell", "api-cell!child-cell1"]
        assert cluster.procs["api-cell"].poll() is None
