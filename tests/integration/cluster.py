"""Real cellsd processes on loopback, for the integration tests.

:class:`Cluster` writes a fresh PKI and configs (the same code as ``cellsd
demo``), starts one ``cellsd run`` process per cell, and stops every one of
them at the end, whatever happened. Commands are run with subprocess: these
tests are about real processes and sockets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellsd.cli.demo import CellFiles, client_endpoint, write_tree

PYTHON = sys.executable


class Cluster:
    def __init__(
        self,
        base: Path,
        children_of: Mapping[str, Sequence[str]],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.base = base
        self.children_of = children_of
        self.cells: dict[str, CellFiles] = write_tree(base, children_of, extra)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.base / "var" / name / "cellsd.log"

    def start(self, name: str) -> None:
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                [PYTHON, "-m", "cellsd.cli.cellsd", "run", "-c", str(self.cells[name].config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def start_all(self) -> None:
        for name in self.cells:
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cellsctl(
        self, name: str, *args: str, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "cellsd.cli.cellsctl", "-c", str(self.cells[name].config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ping_all(self, name: str, *extra: str) -> list[dict[str, Any]]:
        result = self.cellsctl(name, "ping", "--all", "--json", *extra)
        if result.returncode not in (0, 1):
            raise AssertionError(f"cellsctl failed ({result.returncode}): {result.stderr}")
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def wait_until_tree_answers(self, root: str, expected: int, timeout: float = 60.0) -> None:
        """Until every cell answers a ping from ``root``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                rows = self.ping_all(root)
                last = rows
                if len(rows) == expected and all(r["ok"] for r in rows):
                    return
            except (AssertionError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
                last = e
            time.sleep(0.3)
        raise AssertionError(f"the tree did not come up within {timeout}s: {last}\n{self.logs()}")

    def endpoint(self, name: str) -> str:
        return client_endpoint(self.cells[name].api)

    def logs(self) -> str:
        out = []
        for name in self.cells:
            path = self.log_path(name)
            if path.exists():
                out.append(f"--- {name} ---\n" + path.read_text()[-3000:])
        return "\n".join(out)
