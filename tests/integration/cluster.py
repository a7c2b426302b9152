"""Real cellsd processes on loopback, for the integration tests.

:class:`Cluster` writes a fresh PKI and configs (the same code as ``cellsd
demo``), starts one ``cellsd run`` process per cell, and stops every one of
them at the end, whatever happened. Commands are run with subprocess: these
tests are about real processes and sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cellsd.cli.demo import CellFiles, client_endpoint, write_tree

PYTHON = sys.executable
#: The checkout, so ``python -m tests.integration...`` finds the helpers.
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def short_tempdir() -> Iterator[Path]:
    """A fresh directory directly under /tmp, removed afterwards.

    Short on purpose: each cell's UNIX socket lives below it, and socket
    paths are limited to about 100 bytes (pytest's tmp_path is too long).
    """
    path = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_link_client(spec: Mapping[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Run :mod:`tests.integration.link_client` (a fresh reactor in its own
    process) with ``spec``; its JSON report."""
    result = subprocess.run(
        [PYTHON, "-m", "tests.integration.link_client", json.dumps(dict(spec))],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise AssertionError(
            f"link_client failed ({result.returncode}): {result.stdout}\n{result.stderr}"
        )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


class Cluster:
    def __init__(
        self,
        base: Path,
        children_of: Mapping[str, Sequence[str]],
        extra: Mapping[str, Any] | None = None,
        hosts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """``hosts``: simulated compute hosts per cell (``[[compute.hosts]]``)."""
        self.base = base
        self.children_of = children_of
        self.cells: dict[str, CellFiles] = write_tree(base, children_of, extra, hosts)
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

    def pause(self, name: str) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing."""
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.send_signal(signal.SIGCONT)  # a paused cell must see the TERM
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

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def endpoint(self, name: str) -> str:
        return client_endpoint(self.cells[name].api)

    def listen_port(self, name: str) -> int:
        """The TCP port of the cell's ``[cells] listen`` (its children dial it)."""
        listen = self.cells[name].listen
        assert listen is not None and listen.startswith("tcp:"), listen
        return int(listen.split(":")[1])

    def wait_until_listening(self, name: str, timeout: float = 30.0) -> None:
        """Until the cell accepts TCP connections on its ``[cells] listen``."""
        port = self.listen_port(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode})\n{self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{name} did not listen on {port} within {timeout}s\n{self.logs()}")

    def log_text(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, text: str, since: int = 0, timeout: float = 10.0) -> str:
        """The cell's log from character ``since`` on, once it contains ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text(name)[since:]
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}'s log does not mention {text!r}:\n{log[-3000:]}")
            time.sleep(0.1)

    def logs(self) -> str:
        out = []
        for name in self.cells:
            path = self.log_path(name)
            if path.exists():
                out.append(f"--- {name} ---\n" + path.read_text()[-3000:])
        return "\n".join(out)
