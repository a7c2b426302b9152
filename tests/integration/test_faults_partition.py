"""A partition in the middle of a broadcast that changes state, between real
``cellsd run`` processes (issue 7, item 6)::

    api-cell
    ├── child-cell1   (its link crosses a FaultProxy; one simulated host)
    └── child-cell2

The broadcast is ``cellsctl call instance_delete_everywhere_outcomes``
(local RPC 1.39): one row per cell with its outcome. The in-memory version,
with a three-level tree, is tests/unit/test_faults_partition.py.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellsd.config_write import render_config
from cellsd.testing_faults import FaultProxy
from tests.integration.cluster import PYTHON, REPO, Cluster, short_tempdir

pytestmark = pytest.mark.integration

TREE = {"api-cell": ["child-cell1", "child-cell2"]}
C1, C2 = "api-cell!child-cell1", "api-cell!child-cell2"
CALL_TIMEOUT = 5.0
#: Interpreter start-up, import and printing of one cellsctl run.
SLACK = 6.0
TINY = {"id": 1, "flavorid": "1", "name": "m1.tiny", "memory_mb": 512, "vcpus": 1, "root_gb": 1}


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[Cluster, FaultProxy]]:
    extra = {"cells": {"call_timeout": CALL_TIMEOUT, "reconnect_max_delay": 0.5}}
    with short_tempdir() as base, Cluster(base, TREE, extra) as cluster:
        port = cluster.listen_port("api-cell")
        with FaultProxy(port) as proxy:
            config = cluster.cells["child-cell1"].config
            data = tomllib.loads(config.read_text())
            data["parents"][0]["endpoint"] = f"tcp:127.0.0.1:{proxy.port}"
            data["compute"] = {
                "hosts": [{"name": "h1", "vcpus": 8, "memory_mb": 8192, "disk_gb": 64}]
            }
            config.write_text(render_config(data))
            cluster.start_all()
            cluster.wait_until_tree_answers("api-cell", 3)
            yield cluster, proxy


def db(cluster: Cluster, cell: str) -> Path:
    return cluster.base / "var" / cell / "cell.sqlite"


def build_in_child(cluster: Cluster) -> str:
    """One instance built in child-cell1 as Nova's API would; its uuid."""
    spec = {
        "action": "build",
        "endpoint": cluster.endpoint("api-cell"),
        "db": f"sqlite:///{db(cluster, 'api-cell')}",
        "count": 1,
        "flavor": TINY,
        "hints": {"target_cell": C1},
        "wait": 20,
    }
    result = subprocess.run(
        [PYTHON, "-m", "tests.integration.scheduler_client", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=40,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    instances = json.loads(result.stdout.strip().splitlines()[-1])["instances"]
    [(uuid, inst)] = instances.items()
    assert (inst["vm_state"], inst["cell_name"]) == ("active", C1), inst
    return str(uuid)


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def delete_actions(cluster: Cluster, uuid: str) -> int:
    rows = query(
        db(cluster, "child-cell1"),
        "SELECT count(*) FROM instance_actions WHERE instance_uuid = ? AND action = 'delete'",
        uuid,
    )
    return int(rows[0][0])


def delete_everywhere(cluster: Cluster, uuid: str) -> subprocess.Popen[str]:
    args = json.dumps({"instance": {"uuid": uuid}, "delete_type": "hard"})
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "cellsd.cli.cellsctl",
            "-c",
            str(cluster.cells["api-cell"].config),
            "call",
            "instance_delete_everywhere_outcomes",
            args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def outcomes(proc: subprocess.Popen[str]) -> tuple[int, dict[str, dict[str, Any]], str]:
    out, err = proc.communicate(timeout=CALL_TIMEOUT + SLACK)
    assert proc.returncode in (0, 1), err
    return proc.returncode, {r["cell"]: r for r in json.loads(out)}, err


def test_cut_after_send_is_unknown_and_a_rerun_applies_once(
    proxied: tuple[Cluster, FaultProxy],
) -> None:
    """Injected: an instance lives in child-cell1; every write across the
    proxy waits 1 s; a delete-everywhere is sent, and once child-cell1 has
    recorded the delete (its answer still held in the proxy) the link is
    cut. Seen: cellsctl exits 1 at once with child-cell1 ``unknown``
    (CellOutcomeUnknown, it may have been applied), child-cell2 ``ok``, and
    says on stderr that a re-run is safe. Once the link is back, the re-run
    answers ok for every cell, child-cell1 recorded one delete only, and
    the top's copy ends deleted."""
    cluster, proxy = proxied
    uuid = build_in_child(cluster)
    proxy.delay = 1.0
    try:
        start = time.monotonic()
        proc = delete_everywhere(cluster, uuid)
        deadline = time.monotonic() + SLACK + 2
        while delete_actions(cluster, uuid) == 0:
            assert time.monotonic() < deadline, "child-cell1 never applied the delete"
            time.sleep(0.02)
        proxy.cut()
        code, rows, err = outcomes(proc)
    finally:
        proxy.delay = 0.0
    assert code == 1, err
    assert rows[C1]["outcome"] == "unknown", rows
    assert rows[C1]["error"].startswith("CellOutcomeUnknown: "), rows
    assert rows[C2]["outcome"] == "ok", rows
    assert f"unknown      {C1}" in err and "Re-run" in err, err
    assert time.monotonic() - start < CALL_TIMEOUT + SLACK

    cluster.wait_until_tree_answers("api-cell", 3, timeout=20)
    code, rows, err = outcomes(delete_everywhere(cluster, uuid))
    assert code == 0, err
    assert {c: r["outcome"] for c, r in rows.items()} == {C1: "ok", C2: "ok"}
    assert delete_actions(cluster, uuid) == 1
    deadline = time.monotonic() + 15
    while True:
        [(vm_state, deleted)] = query(
            db(cluster, "api-cell"), "SELECT vm_state, deleted FROM instances WHERE uuid = ?", uuid
        )
        if vm_state == "deleted" and deleted:
            break
        assert time.monotonic() < deadline, (vm_state, deleted)
        time.sleep(0.2)


def test_refused_before_sending_is_unreachable(proxied: tuple[Cluster, FaultProxy]) -> None:
    """Injected: child-cell1's link is cut and new connections refused.
    Seen: a delete-everywhere answers at once (no deadline wait) with
    child-cell1 ``unreachable`` (CellUnreachable: never sent), child-cell2
    ``ok``."""
    cluster, proxy = proxied
    proxy.refuse = True
    proxy.cut()
    try:
        deadline = time.monotonic() + 10
        while True:  # until api-cell has seen the link go (at once, as a rule)
            start = time.monotonic()
            code, rows, err = outcomes(delete_everywhere(cluster, "no-such-instance"))
            seconds = time.monotonic() - start
            if rows[C1]["outcome"] == "unreachable":
                break
            assert time.monotonic() < deadline, rows
    finally:
        proxy.refuse = False
    assert code == 1, err
    assert rows[C1]["error"].startswith("CellUnreachable: "), rows
    assert rows[C2]["outcome"] == "ok", rows
    assert seconds < SLACK, seconds
