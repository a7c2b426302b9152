"""The cells scheduler over real ``cellsd run`` processes (behaviour §5, §6)::

    api-cell
    ├── child-a            hosts a1, a2: 8 GB each
    └── child-b
        ├── gc-b1          host b1: 8 GB
        └── gc-b2          host b2: 4 GB

Capacities flow up every UPDATE seconds (and, coalesced, after each child
report); a child silent for MUTE seconds is mute. Builds are driven as
Nova's API cell drives them (tests/integration/scheduler_client.py): each
instance recorded in the top's database first, then ``build_instances``
cast through ``cellsd.client.connect``. The tree is started once; the tests
run in the order written and share it.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cellsd.config_write import render_config
from tests.integration.cluster import PYTHON, REPO, Cluster, short_tempdir

pytestmark = pytest.mark.integration

TREE = {"api-cell": ["child-a", "child-b"], "child-b": ["gc-b1", "gc-b2"]}
#: Each leaf's path from the top.
LEAVES = {
    "child-a": "api-cell!child-a",
    "gc-b1": "api-cell!child-b!gc-b1",
    "gc-b2": "api-cell!child-b!gc-b2",
}
HOSTS = {
    "child-a": [("a1", 8192), ("a2", 8192)],
    "gc-b1": [("b1", 8192)],
    "gc-b2": [("b2", 4096)],
}
UPDATE = 1.5
MUTE = 4.0
TINY = {
    "id": 1,
    "flavorid": "1",
    "name": "m1.tiny",
    "memory_mb": 512,
    "vcpus": 1,
    "root_gb": 1,
    "ephemeral_gb": 0,
}
HUGE = {
    "id": 99,
    "flavorid": "99",
    "name": "huge",
    "memory_mb": 65536,
    "vcpus": 1,
    "root_gb": 1,
    "ephemeral_gb": 0,
}
EXTRA = {
    "cells": {
        "call_timeout": 10,
        "update_interval": UPDATE,
        "mute_child_interval": MUTE,
        "coalesce_window": 0.2,
    },
    "scheduler": {"retries": 1, "retry_delay": 0.5},
}


def _give_hosts(cluster: Cluster) -> None:
    """Rewrite each leaf's config with its [[compute.hosts]]."""
    for name, hosts in HOSTS.items():
        path = cluster.cells[name].config
        data = tomllib.loads(path.read_text())
        data["compute"] = {
            "hosts": [{"name": h, "vcpus": 8, "memory_mb": mb, "disk_gb": 64} for h, mb in hosts]
        }
        path.write_text(render_config(data))


@pytest.fixture(scope="module")
def tree() -> Iterator[Cluster]:
    with short_tempdir() as base, Cluster(base, TREE, EXTRA) as cluster:
        _give_hosts(cluster)
        cluster.start_all()
        cluster.wait_until_tree_answers("api-cell", 5)
        yield cluster


def client(spec: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Run tests/integration/scheduler_client.py with ``spec``; its JSON."""
    result = subprocess.run(
        [PYTHON, "-m", "tests.integration.scheduler_client", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise AssertionError(
            f"client failed ({result.returncode}): {result.stdout}\n{result.stderr}"
        )
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def top_db(cluster: Cluster) -> str:
    return f"sqlite:///{cluster.base / 'var' / 'api-cell' / 'cell.sqlite'}"


def build(
    cluster: Cluster, count: int, flavor: dict[str, Any] = TINY, **spec: Any
) -> dict[str, Any]:
    return client(
        {
            "action": "build",
            "endpoint": cluster.endpoint("api-cell"),
            "db": top_db(cluster),
            "count": count,
            "flavor": flavor,
            "wait": 30,
            **spec,
        }
    )


def capacities(cluster: Cluster, leaves: dict[str, str] = LEAVES) -> dict[str, Any]:
    return client(
        {
            "action": "capacities",
            "top": cluster.endpoint("api-cell"),
            "leaves": {n: cluster.endpoint(n) for n in leaves},
            "timeout": 20,
        }
    )


def cellsctl_json(cluster: Cluster, *args: str) -> Any:
    result = cluster.cellsctl("api-cell", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def units(figures: dict[str, Any]) -> int:
    return int(figures["ram_free"]["units_by_mb"]["512"])


def test_capacities_reach_the_top(tree: Cluster) -> None:
    """After start-up the top's get_capacities equals the sum of the
    leaves' own capacities, within one update period of the last leaf
    having its figures; cellsctl capacities shows the same, per child."""
    report = capacities(tree)
    assert report["equal"], report
    assert report["seconds_after_leaves"] <= UPDATE + 1.0, report
    assert {n: units(f) for n, f in report["leaves"].items()} == {
        "child-a": 28,
        "gc-b1": 14,
        "gc-b2": 7,
    }
    assert report["top"]["ram_free"]["total_mb"] == 28672
    view = cellsctl_json(tree, "capacities")
    assert view["capacities"] == report["top"]
    assert units(view["children"]["child-b"]["capacities"]) == 21
    assert not any(c["mute"] for c in view["children"].values())
    below = cellsctl_json(tree, "capacities", "child-b")
    assert sorted(below["children"]) == ["gc-b1", "gc-b2"]


def test_target_cell_lands_exactly_there(tree: Cluster) -> None:
    """A target_cell hint puts the instance in that cell, not the best one."""
    result = build(tree, 1, hints={"target_cell": LEAVES["gc-b2"]})
    (inst,) = result["instances"].values()
    assert (inst["vm_state"], inst["cell_name"], inst["host"]) == ("active", LEAVES["gc-b2"], "b2")


def test_too_large_for_every_cell(tree: Cluster) -> None:
    """A flavor no cell can hold ends in ERROR at the top, with an instance
    fault saying why (each cell's refusal), after the configured retry."""
    result = build(tree, 1, flavor=HUGE)
    (inst,) = result["instances"].values()
    assert inst["vm_state"] == "error", inst
    assert inst["cell_name"] is None
    (fault,) = inst["faults"]
    assert "No cell could take the instances" in fault, fault
    assert "room for 0" in fault, fault


def test_stopped_leaf_becomes_mute(tree: Cluster) -> None:
    """child-a, the cell with the most room, is stopped (SIGSTOP: its link
    stays open but it says nothing). Within the mute interval the top shows
    it mute and leaves it out of its capacities; builds meanwhile go to
    the other leaves, at once (never waiting on the silent one). Resumed,
    it reports again and counts again."""
    tree.pause("child-a")
    try:
        deadline = time.monotonic() + MUTE + UPDATE + 5
        while True:
            view = cellsctl_json(tree, "capacities")
            if view["children"]["child-a"]["mute"]:
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.3)
        assert view["children"]["child-a"]["last_seen_age"] > MUTE
        others = {n: p for n, p in LEAVES.items() if n != "child-a"}
        result = build(tree, 3)
        assert result["seconds"] < 8, result
        placed = [i["cell_name"] for i in result["instances"].values()]
        assert all(i["vm_state"] == "active" for i in result["instances"].values()), result
        assert set(placed) <= set(others.values()), placed
        # The mute child's figures left the top's aggregate.
        assert view["capacities"] == view["children"]["child-b"]["capacities"]
    finally:
        tree.resume("child-a")
    report = capacities(tree)
    assert report["equal"], report


def test_fifty_builds_spread_by_free_ram(tree: Cluster) -> None:
    """50 instances built from the top at once spread across the leaves
    in proportion to each leaf's free RAM (its units of the flavor when the
    burst starts), and no host is ever given more than it holds."""
    before = capacities(tree)
    assert before["equal"], before
    free = {n: units(f) for n, f in before["leaves"].items()}
    total = sum(free.values())
    result = build(tree, 50)
    states = Counter(i["vm_state"] for i in result["instances"].values())
    assert states == {"active": 50}, result
    by_path = Counter(i["cell_name"] for i in result["instances"].values())
    counts = {n: by_path.get(p, 0) for n, p in LEAVES.items()}
    shares = {n: 50 * free[n] / total for n in LEAVES}
    print(f"\nfree units before: {free}\nbuilt: {counts}\nproportional: {shares}")
    print(f"50 builds active in {result['seconds']} s")
    for name in LEAVES:
        assert abs(counts[name] - shares[name]) <= max(3.0, 0.2 * shares[name]), (counts, shares)
    nodes = client({"action": "nodes", "endpoint": tree.endpoint("api-cell")})["nodes"]
    assert len(nodes) == 4
    for node in nodes:
        assert node["memory_mb_used"] <= node["memory_mb"], node
        assert node["free_ram_mb"] >= 0, node
