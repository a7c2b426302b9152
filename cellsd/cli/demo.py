"""``cellsd demo``: a tree of real cellsd processes on loopback.

:func:`write_tree` makes a fresh PKI and one config per cell (also used by
the integration tests); :func:`run_demo` starts one ``cellsd run`` process per
cell, waits until the whole tree answers, prints how to reach it, and stops
every process on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cellsd import pki
from cellsd.client import client_endpoint_for as client_endpoint
from cellsd.config_write import write_cell_config

#: Longest UNIX socket path we use; the kernel's limit is 107 bytes.
_MAX_SOCKET_PATH = 100


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def demo_tree(per_level: int = 2) -> dict[str, list[str]]:
    """api-cell, ``per_level`` children, ``per_level`` grandchildren each."""
    children = [f"child-cell{i}" for i in range(1, per_level + 1)]
    tree: dict[str, list[str]] = {"api-cell": children}
    n = 0
    for child in children:
        tree[child] = []
        for _ in range(per_level):
            n += 1
            tree[child].append(f"grandchild-cell{n}")
    return tree


@attrs.frozen
class CellFiles:
    name: str
    config: Path
    api: str
    listen: str | None


def write_tree(
    base: Path,
    children_of: Mapping[str, Sequence[str]],
    extra: Mapping[str, Any] | None = None,
    hosts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, CellFiles]:
    """A fresh CA, a certificate per cell, and a config per cell under
    ``base``; cells with children listen on a free loopback port; ``hosts``
    gives cells simulated compute hosts (``[[compute.hosts]]``)."""
    base = base.resolve()
    for owned in ("pki", "var"):
        shutil.rmtree(base / owned, ignore_errors=True)
    tls = base / "pki"
    tls.mkdir(parents=True)
    pki.init_ca(tls)
    parent_of = {kid: parent for parent, kids in children_of.items() for kid in kids}
    names = list(dict.fromkeys([*children_of, *parent_of]))
    listen = {
        name: f"tcp:{free_port()}:interface=127.0.0.1" for name in names if children_of.get(name)
    }
    cells = {}
    for name in names:
        pki.issue(tls, name)
        state_dir = base / "var" / name
        sock = state_dir / "cellsd.sock"
        api = (
            f"unix:{sock}:mode=600"
            if len(str(sock)) <= _MAX_SOCKET_PATH
            else f"tcp:{free_port()}:interface=127.0.0.1"
        )
        parents = []
        if name in parent_of:
            port = listen[parent_of[name]].split(":")[1]
            parents.append((parent_of[name], f"tcp:127.0.0.1:{port}"))
        config = write_cell_config(
            base / f"{name}.toml",
            name=name,
            state_dir=state_dir,
            tls_dir=tls,
            listen=listen.get(name),
            parents=parents,
            children=list(children_of.get(name, [])),
            api_listen=api,
            hosts=list((hosts or {}).get(name, ())),
            extra=extra,
        )
        cells[name] = CellFiles(name, config, api, listen.get(name))
    return cells


def run_demo(directory: str, per_level: int = 2) -> int:
    from twisted.internet import reactor, task
    from twisted.internet.defer import Deferred

    from cellsd.client import connect
    from cellsd.context import get_admin_context

    base = Path(directory).resolve()
    tree = demo_tree(per_level)
    # The leaves run the simulated compute: two hosts each, of two sizes, so
    # that capacities, the scheduler and the status page have work to show.
    leaves = [name for kids in tree.values() for name in kids if not tree.get(name)]
    hosts = {
        leaf: [
            {"name": "host1", "vcpus": 16, "memory_mb": 32768 * (1 + i % 2), "disk_gb": 500},
            {"name": "host2", "vcpus": 32, "memory_mb": 65536, "disk_gb": 1000},
        ]
        for i, leaf in enumerate(leaves)
    }
    cells = write_tree(base, tree, hosts=hosts)
    # The API cell serves the status page and metrics (cellsd.ops.web).
    status_port = free_port()
    config = cells["api-cell"].config
    metrics = f'[metrics]\nlisten = "tcp:{status_port}:interface=127.0.0.1"\n'
    config.write_text(config.read_text() + "\n" + metrics)
    procs: dict[str, Any] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, files in cells.items():
        log = base / "var" / name / "cellsd.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            procs[name] = _spawn(
                reactor,
                [sys.executable, "-m", "cellsd.cli.cellsd", "run", "-c", str(files.config)],
                env,
                out.fileno(),
            )

    async def wait_ready() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for _ in range(60):
            try:
                api = await connect(
                    reactor,
                    client_endpoint(cells["api-cell"].api),
                    call_timeout=5.0,
                    connect_timeout=2.0,
                )
                try:
                    rows = await api.ping_all(get_admin_context())
                finally:
                    api.transport.close()
                if len(rows) == len(cells) and all(r["ok"] for r in rows):
                    return rows
            except Exception:
                pass
            await task.deferLater(reactor, 0.5, lambda: None)
        return rows

    def stop_all() -> Deferred[Any]:
        """TERM every cell, wait for them, KILL what is left after 10 s."""
        from twisted.internet.defer import DeferredList

        alive = [p for p in procs.values() if p.pid is not None]
        for proc in alive:
            proc.signalProcess("TERM")
        d = DeferredList([p.proto.ended for p in alive])
        d.addTimeout(10, reactor)
        d.addErrback(lambda _: [p.signalProcess("KILL") for p in alive if p.pid is not None])
        return d

    async def main() -> int:
        rows = await wait_ready()
        ok = len(rows) == len(cells) and all(r["ok"] for r in rows)
        print(
            f"cellsd demo: {len(cells)} cells under {base}"
            + ("" if ok else " (NOT all answering yet; see the logs)")
        )
        for name, files in cells.items():
            listen = f"  children dial {client_endpoint(files.listen)}" if files.listen else ""
            print(f"  {name:<18} api {client_endpoint(files.api)}{listen}")
        rel = os.path.relpath(base)
        print(f"\nStatus page: http://127.0.0.1:{status_port}/  (metrics: /metrics)")
        print("\nTry:")
        print(f"  cellsctl -c {rel}/api-cell.toml tree")
        print(f"  cellsctl -c {rel}/api-cell.toml ping --all")
        print(f"  cellsctl -c {rel}/grandchild-cell1.toml ping --all --up --json")
        print(f"\nLogs: {rel}/var/CELL/cellsd.log.  Ctrl-C stops the tree.")
        sys.stdout.flush()
        await Deferred()  # until Ctrl-C stops the reactor
        return 0

    reactor.addSystemEventTrigger("before", "shutdown", stop_all)
    Deferred.fromCoroutine(main())
    reactor.run()
    print("cellsd demo: stopped")
    return 0


def _spawn(reactor: Any, argv: list[str], env: dict[str, str], log_fd: int) -> Any:
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ProcessProtocol

    class Proc(ProcessProtocol):
        def __init__(self) -> None:
            self.ended: Deferred[None] = Deferred()

        def processEnded(self, reason: Any) -> None:
            self.ended.callback(None)

    return reactor.spawnProcess(
        Proc(), argv[0], argv, env=env, childFDs={0: "w", 1: log_fd, 2: log_fd}
    )
