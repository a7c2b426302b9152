"""The status page in a real browser: headless Chromium (Debian's package)
against a tree of real ``cellsd run`` processes."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest

from cellsd.cli.demo import free_port
from tests.integration.cluster import Cluster
from tests.integration.ops_support import append_config, require_program, run, short_base

pytestmark = pytest.mark.integration

TREE = {"api-cell": ["child-cell1", "child-cell2"], "child-cell1": ["grandchild-cell1"]}
PATHS = [
    "api-cell",
    "api-cell!child-cell1",
    "api-cell!child-cell1!grandchild-cell1",
    "api-cell!child-cell2",
]


def chromium_dom(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its script ran (virtual time: the script's
    fetches finish, then 2.5 s of its timers run)."""
    result = run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=2500",
            "--dump-dom",
            url,
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def cell_states(dom: str) -> dict[str, str]:
    return dict(re.findall(r'data-cell="([^"]+)" data-state="([^"]+)"', dom))


def test_page_draws_every_cell_and_a_stopped_cell_turns_red() -> None:
    """The page draws the whole tree from status.json and redraws itself
    every 2 s; a cell killed with SIGKILL is then drawn red (down) and the
    others stay as they were."""
    chromium = require_program(("chromium", "chromium-browser"), "chromium")
    with short_base() as base:
        cluster = Cluster(base, TREE)
        port = free_port()
        append_config(
            cluster, "api-cell", f'[metrics]\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            cluster.start_all()
            cluster.wait_until_tree_answers("api-cell", len(PATHS))
            dom = chromium_dom(chromium, url, base / "chromium")
            assert cell_states(dom) == dict.fromkeys(PATHS, "up"), dom
            refreshes = re.search(r'data-refreshes="(\d+)"', dom)
            assert refreshes is not None and int(refreshes.group(1)) >= 2, dom
            assert "grandchild-cell1</text>" in dom

            metrics = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
            assert 'cellsd_link_up{direction="child",neighbour="child-cell1"} 1.0' in metrics

            # A direct child: this cell's own link state shows it at once
            # (deeper cells come from a broadcast kept for TREE_TTL seconds;
            # tests/unit/test_ops_web.py covers those).
            cluster.kill("child-cell2")
            deadline = time.monotonic() + 30
            states: dict[str, str] = {}
            while time.monotonic() < deadline:
                states = cell_states(chromium_dom(chromium, url, base / "chromium"))
                if states.get("api-cell!child-cell2") == "down":
                    break
                time.sleep(0.5)
            assert states == {
                "api-cell": "up",
                "api-cell!child-cell1": "up",
                "api-cell!child-cell1!grandchild-cell1": "up",
                "api-cell!child-cell2": "down",
            }, cluster.logs()
        finally:
            cluster.stop_all()
