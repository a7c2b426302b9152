"""One grep follows a message: real cells, JSON logs, with
``[log] trace_messages = true``."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.cluster import Cluster
from tests.integration.ops_support import json_records, short_base

pytestmark = pytest.mark.integration

TREE = {"api-cell": ["child-cell1", "child-cell2"], "child-cell1": ["grandchild-cell1"]}
CELLS = ["api-cell", "child-cell1", "child-cell2", "grandchild-cell1"]


def new_records(cluster: Cluster, since: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    return {name: json_records(cluster.log_text(name)[since[name] :]) for name in CELLS}


def with_uuid(records: list[dict[str, Any]], uuid: str) -> list[str]:
    """The first word of each of the cell's lines about ``uuid``."""
    return [r["log_format"].split()[0] for r in records if r.get("uuid") == uuid]


def test_a_message_uuid_is_in_the_log_of_every_cell_it_passes() -> None:
    """A targeted ping's uuid is a JSON field in the logs of the cells on
    its path (and no other); a broadcast's in the logs of every cell."""
    with short_base() as base:
        cluster = Cluster(base, TREE, extra={"log": {"format": "json", "trace_messages": True}})
        try:
            cluster.start_all()
            cluster.wait_until_tree_answers("api-cell", len(CELLS))
            # Let link-up state pushes settle so only our messages follow.
            time.sleep(0.5)
            since = {name: len(cluster.log_text(name)) for name in CELLS}
            result = cluster.cellsctl("api-cell", "ping", "child-cell1!grandchild-cell1")
            assert result.returncode == 0, result.stderr
            time.sleep(0.3)
            records = new_records(cluster, since)
            [uuid] = {r["uuid"] for r in records["api-cell"] if r.get("method") == "ping"}
            assert with_uuid(records["api-cell"], uuid) == ["forwarding"]
            # a relay passes the message on without decoding it: one line
            assert with_uuid(records["child-cell1"], uuid) == ["relaying"]
            assert with_uuid(records["grandchild-cell1"], uuid) == ["received", "executing"]
            assert with_uuid(records["child-cell2"], uuid) == []
            # the JSON record carries the fields, not only the text
            [executed] = [r for r in records["grandchild-cell1"] if r.get("uuid") == uuid][1:]
            assert executed["cell"] == "grandchild-cell1"
            assert executed["path"] == "api-cell!child-cell1!grandchild-cell1"
            assert executed["log_level"]["name"] == "info"

            since = {name: len(cluster.log_text(name)) for name in CELLS}
            result = cluster.cellsctl("api-cell", "tree")
            assert result.returncode == 0, result.stderr
            time.sleep(0.3)
            records = new_records(cluster, since)
            everywhere = set.intersection(
                *({r["uuid"] for r in records[name] if "uuid" in r} for name in CELLS)
            )
            assert len(everywhere) == 1, records
        finally:
            cluster.stop_all()
