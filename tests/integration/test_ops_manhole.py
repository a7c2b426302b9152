"""The manhole of a real ``cellsd run`` process, driven by the OpenSSH
client: who gets in, who does not, and what a session can do."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from cellsd.cli.demo import free_port
from tests.integration.cluster import Cluster
from tests.integration.ops_support import append_config, require_program, run, short_base

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|c)")


@attrs.frozen
class Manhole:
    ssh: str
    base: Path
    port: int
    cluster: Cluster

    def argv(self, key: str, *options: str, command: str | None = None) -> list[str]:
        return [
            self.ssh,
            "-F",
            "/dev/null",
            *(["-p", str(self.port)] if self.port else []),
            "-i",
            str(self.base / key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            *options,
            "127.0.0.1",
            *([command] if command else []),
        ]


@pytest.fixture(scope="module")
def manhole() -> Iterator[Manhole]:
    """One cell with its manhole on a loopback port; one key authorized."""
    ssh = require_program(("ssh",), "openssh-client")
    keygen = require_program(("ssh-keygen",), "openssh-client")
    with short_base() as base:
        for key in ("operator", "stranger"):
            made = run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)])
            assert made.returncode == 0, made.stderr
        (base / "authorized_keys").write_text((base / "operator.pub").read_text())
        cluster = Cluster(base, {"solo-cell": []})
        port = free_port()
        append_config(
            cluster,
            "solo-cell",
            f'[manhole]\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
            f'authorized_keys = "{base / "authorized_keys"}"\n',
        )
        try:
            cluster.start("solo-cell")
            cluster.wait_until_tree_answers("solo-cell", 1)
            yield Manhole(ssh, base, port, cluster)
        finally:
            cluster.stop_all()


def session(manhole: Manhole, lines: list[str], wait: float = 1.0) -> str:
    """Type ``lines`` into an interactive session (a pty, as a person
    would), wait for late results, leave with Ctrl-D; the screen as text."""
    proc = subprocess.Popen(
        manhole.argv("operator", "-tt"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None
    try:
        for line in lines:
            proc.stdin.write(line.encode() + b"\r")
            proc.stdin.flush()
            time.sleep(0.3)
        time.sleep(wait)
        proc.stdin.write(b"\x04")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return ANSI.sub("", out.decode("utf-8", "replace")).replace("\r", "")


def test_key_login_evaluates_against_the_live_daemon(manhole: Manhole) -> None:
    """An authorized key gets a Python prompt inside the daemon: its
    namespace holds the running cell, and a Deferred (or coroutine) shows
    its result when it fires."""
    screen = session(
        manhole,
        [
            "runner.my_name",
            "from twisted.internet import task",
            "task.deferLater(reactor, 0.5, lambda: state.my_name.upper())",
            "api.ping_all(ctxt)",
        ],
    )
    assert "'solo-cell'" in screen, screen
    assert "<Deferred #0>" in screen, screen
    assert "Deferred #0 called back: 'SOLO-CELL'" in screen, screen
    assert "{'cell': 'solo-cell', 'ok': True" in screen, screen
    log = manhole.cluster.log_text("solo-cell")
    assert "manhole: root logged in with" in log or "logged in with" in log


def test_a_key_not_in_the_file_is_refused(manhole: Manhole) -> None:
    """Another key, though a valid one, does not get in."""
    result = run(manhole.argv("stranger", command="true"), timeout=30)
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert "manhole: refused" in manhole.cluster.log_text("solo-cell")


def test_a_password_login_is_refused(manhole: Manhole) -> None:
    """A client that will only use a password is turned away: the server
    offers public-key authentication and nothing else."""
    result = run(
        manhole.argv(
            "operator",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            command="true",
        ),
        timeout=30,
    )
    assert result.returncode == 255
    assert "Permission denied (publickey)." in result.stderr


def _other_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one (a UDP
    connect sends nothing; it only picks the outgoing interface)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            address: str = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_a_connection_from_another_address_is_refused(manhole: Manhole) -> None:
    """The manhole listens on loopback only: the machine's own external
    address finds nothing there (config refuses 0.0.0.0; see
    tests/unit/test_ops_config.py)."""
    socket.create_connection(("127.0.0.1", manhole.port), timeout=5).close()
    address = _other_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, manhole.port), timeout=5).close()


def test_default_unix_socket_is_private_and_answers() -> None:
    """Enabled without a listen, the manhole is a mode-600 UNIX socket in
    state_dir (the host key beside it, 0600) that an OpenSSH client reaches
    through socat."""
    ssh = require_program(("ssh",), "openssh-client")
    keygen = require_program(("ssh-keygen",), "openssh-client")
    socat = require_program(("socat",), "socat")
    with short_base() as base:
        made = run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(base / "operator")])
        assert made.returncode == 0, made.stderr
        (base / "authorized_keys").write_text((base / "operator.pub").read_text())
        cluster = Cluster(base, {"solo-cell": []})
        keys = base / "authorized_keys"
        append_config(
            cluster, "solo-cell", f'[manhole]\nenabled = true\nauthorized_keys = "{keys}"\n'
        )
        state_dir = base / "var" / "solo-cell"
        try:
            cluster.start("solo-cell")
            cluster.wait_until_tree_answers("solo-cell", 1)
            sock = state_dir / "manhole.sock"
            assert sock.stat().st_mode & 0o777 == 0o600
            assert (state_dir / "manhole_host_key").stat().st_mode & 0o777 == 0o600
            proxy = f"ProxyCommand={socat} - UNIX-CONNECT:{sock}"
            manhole = Manhole(ssh, base, 0, cluster)
            result = run(manhole.argv("operator", "-o", proxy, command="true"), timeout=30)
            # a shell is all it offers: an exec request is declined once logged in
            assert "Permission denied" not in result.stderr, result.stderr
            assert "logged in with" in cluster.log_text("solo-cell")
        finally:
            cluster.stop_all()
