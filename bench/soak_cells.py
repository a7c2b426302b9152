"""The soak's tree of real ``cellsd run`` processes (bench/soak.py).

:class:`SoakCells` writes a fresh PKI and one config per cell
(:func:`cellsd.cli.demo.write_tree`), puts a
:class:`cellsd.testing_faults.FaultProxy` on every link (each child's
``[[parents]] endpoint`` points at its proxy, which forwards to the
parent's ``[cells] listen``), gives every cell a status page, and starts,
kills, stalls and restarts the processes. It also reads each cell's SQLite
store directly (read-only), which is how the soak sees what an outbox
holds and what reached the top.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellsd.cli.demo import CellFiles, free_port, write_tree
from cellsd.testing_faults import FaultProxy

TOP = "api-cell"


def paths_of(shape: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each cell's full path from the top (``api-cell!mid1!leaf1``)."""
    paths = {TOP: TOP}
    todo = [TOP]
    while todo:
        parent = todo.pop()
        for child in shape.get(parent, ()):
            paths[child] = f"{paths[parent]}!{child}"
            todo.append(child)
    return paths


class SoakCells:
    """One process per cell, a FaultProxy per link (see the module doc)."""

    def __init__(
        self,
        base: Path,
        shape: Mapping[str, Sequence[str]],
        cells_settings: Mapping[str, Any],
        hosts: Mapping[str, Sequence[Mapping[str, Any]]],
        seed: int,
    ) -> None:
        self.base = base
        self.shape = shape
        self.paths = paths_of(shape)
        self.parent_of = {kid: parent for parent, kids in shape.items() for kid in kids}
        self.files: dict[str, CellFiles] = write_tree(
            base, shape, {"cells": dict(cells_settings)}, hosts
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: The proxy on each child's link to its parent, by the child's name.
        self.proxies: dict[str, FaultProxy] = {}
        self.status_ports: dict[str, int] = {}
        for n, (name, files) in enumerate(self.files.items()):
            text = files.config.read_text()
            parent = self.parent_of.get(name)
            if parent is not None:
                port = self.listen_port(parent)
                proxy = self.proxies[name] = FaultProxy(port, seed=seed + n).start()
                target = f"tcp:127.0.0.1:{port}"
                assert target in text, text
                text = text.replace(target, f"tcp:127.0.0.1:{proxy.port}")
            status = self.status_ports[name] = free_port()
            text += f'\n[metrics]\nlisten = "tcp:{status}:interface=127.0.0.1"\n'
            files.config.write_text(text)

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def leaves(self) -> list[str]:
        return [name for name in self.files if not self.shape.get(name)]

    def listen_port(self, name: str) -> int:
        listen = self.files[name].listen
        assert listen is not None and listen.startswith("tcp:"), listen
        return int(listen.split(":")[1])

    def log_path(self, name: str) -> Path:
        return self.base / "var" / name / "cellsd.log"

    # -- processes -------------------------------------------------------------------

    def start(self, name: str) -> None:
        log = self.log_path(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cellsd.cli.cellsd",
                    "run",
                    "-c",
                    str(self.files[name].config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def exited(self) -> dict[str, int]:
        """Cells whose process ended on its own (not killed by us)."""
        return {
            name: code
            for name, proc in self.procs.items()
            if (code := proc.poll()) is not None and code != -signal.SIGKILL
        }

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proxy in self.proxies.values():
            proxy.stop()

    # -- what the cells say ----------------------------------------------------------

    def query(self, name: str, sql: str, *args: Any) -> list[sqlite3.Row]:
        """Rows from the cell's store, opened read-only."""
        path = self.base / "var" / name / "cell.sqlite"
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        ) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, args).fetchall()

    def outbox_rows(self, name: str) -> int:
        return int(self.query(name, "SELECT count(*) FROM outbox")[0][0])

    def status(self, name: str) -> dict[str, Any]:
        """The cell's status page as JSON (blocking; call it from a thread)."""
        url = f"http://127.0.0.1:{self.status_ports[name]}/status.json"
        with urllib.request.urlopen(url, timeout=10) as answer:
            found: dict[str, Any] = json.load(answer)
        return found

    def log_problems(self) -> dict[str, int]:
        """Error, critical and traceback lines per cell log."""
        marks = ("#error]", "#critical]", "Traceback (most recent call last)")
        out: dict[str, int] = {}
        for name in self.files:
            try:
                text = self.log_path(name).read_text(errors="replace")
            except OSError:
                continue
            count = sum(1 for line in text.splitlines() if any(m in line for m in marks))
            if count:
                out[name] = count
        return out
