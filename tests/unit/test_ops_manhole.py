"""The manhole's parts in memory: host key, key checking, refusals, the
per-session namespace and the displayhook. The SSH login itself, with the
OpenSSH client against a real daemon, is in tests/integration/test_ops_manhole.py."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cellsd.ops.manhole import (
    CellsManholeInterpreter,
    ManholeFactory,
    load_or_create_host_key,
    namespace_for,
    read_authorized_keys,
)
from cellsd.rpc.manager import CellsManager
from cellsd.testing import MemoryTree


def new_key() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def signed(key: keys.Key, user: bytes = b"anyone") -> SSHPrivateKey:
    """Credentials as conch builds them from a signed publickey request."""
    data = b"session data to sign"
    return SSHPrivateKey(user, b"ssh-ed25519", key.public().blob(), data, key.sign(data))


class Output:
    """Collects what the interpreter writes (the manhole protocol's role)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def addOutput(self, data: str, isAsync: bool | None = None) -> None:
        self.lines.append(data)


class HostKeyTests(SynchronousTestCase):
    def test_made_once_private_and_reused(self) -> None:
        """The first start makes an Ed25519 key with mode 0600; the next
        start loads the same key."""
        state_dir = Path(self.mktemp())
        first = load_or_create_host_key(state_dir)
        path = state_dir / "manhole_host_key"
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        self.assertEqual(first.sshType(), b"ssh-ed25519")
        self.assertEqual(load_or_create_host_key(state_dir), first)

    def test_a_readable_key_is_refused(self) -> None:
        """A host key others can read is not used."""
        state_dir = Path(self.mktemp())
        load_or_create_host_key(state_dir)
        os.chmod(state_dir / "manhole_host_key", 0o644)
        self.assertRaises(PermissionError, load_or_create_host_key, state_dir)


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.allowed, self.other = new_key(), new_key()
        tmp = Path(self.mktemp())
        tmp.mkdir()
        self.keys_file = tmp / "authorized_keys"
        self.keys_file.write_bytes(
            b"# operators\n" + self.allowed.public().toString("OPENSSH") + b" ops@example\n"
        )
        top = SimpleNamespace(cell=None)
        self.factory = ManholeFactory(
            top,  # type: ignore[arg-type]  # only the namespace reads it
            read_authorized_keys(self.keys_file),
            load_or_create_host_key(tmp / "state"),
        )
        self.portal = self.factory.portal

    def login(self, credentials: Any) -> defer.Deferred[Any]:
        from twisted.conch.interfaces import IConchUser

        return self.portal.login(credentials, None, IConchUser)

    def test_the_file_is_read(self) -> None:
        """Comments are skipped, keys are read."""
        self.assertEqual(read_authorized_keys(self.keys_file), [self.allowed.public()])

    def test_only_public_keys_are_offered(self) -> None:
        """The portal knows one kind of credential: an SSH key."""
        self.assertEqual(self.portal.listCredentialsInterfaces(), [ISSHPrivateKey])

    def test_a_password_is_refused(self) -> None:
        """A user name and password cannot log in at all."""
        self.failureResultOf(self.login(UsernamePassword(b"root", b"root")), UnhandledCredentials)

    def test_a_listed_key_logs_in_as_any_user(self) -> None:
        """A key from the file logs in (the key, not the name, is the credential)."""
        _interface, avatar, logout = self.successResultOf(self.login(signed(self.allowed, b"ops")))
        self.assertIsNotNone(avatar)
        logout()

    def test_a_key_not_in_the_file_is_refused(self) -> None:
        """Another key, even correctly signed, is refused."""
        self.failureResultOf(self.login(signed(self.other)), UnauthorizedLogin)

    def test_an_unsigned_query_is_only_answered(self) -> None:
        """The client's first, unsigned question gets "acceptable", no login."""
        query = SSHPrivateKey(b"ops", b"ssh-ed25519", self.allowed.public().blob(), None, None)
        self.failureResultOf(self.login(query), ValidPublicKey)

    def test_connections_from_elsewhere_are_refused(self) -> None:
        """Should it ever listen beyond loopback, only loopback peers get a
        protocol; others are dropped at once."""
        self.factory.startFactory()
        self.addCleanup(self.factory.stopFactory)
        self.assertIsNone(self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4000)))
        self.assertIsNone(self.factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 4000)))
        self.assertIsNotNone(self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000)))
        self.assertIsNotNone(self.factory.buildProtocol(IPv6Address("TCP", "::1", 4000)))
        self.assertIsNotNone(self.factory.buildProtocol(UNIXAddress(b"/tmp/manhole.sock")))

    def test_host_key_is_instance_state(self) -> None:
        """The host key lives on this factory, not on conch's shared class dict."""
        from twisted.conch.manhole_ssh import ConchFactory

        self.assertEqual(list(self.factory.privateKeys), [b"ssh-ed25519"])
        self.assertEqual(ConchFactory.privateKeys, {})


class NamespaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        runner = MemoryTree(self.clock)["api-cell"]
        manager = CellsManager(runner, runner.state, self.clock)
        cell = SimpleNamespace(
            runner=runner, state=runner.state, links=runner.links, manager=manager, settings=None
        )
        self.top = SimpleNamespace(cell=cell, metrics=None)

    def test_namespace_holds_the_cell(self) -> None:
        """Each session sees the service tree, the cell's parts, no store
        (none configured) and a ready CellsAPI."""
        ns = namespace_for(self.top)  # type: ignore[arg-type]  # a CellService stand-in
        self.assertIs(ns["service"], self.top)
        self.assertIs(ns["runner"], self.top.cell.runner)
        self.assertIs(ns["state"], self.top.cell.state)
        self.assertIs(ns["manager"], self.top.cell.manager)
        self.assertIsNone(ns["store"])
        self.assertEqual(ns["runner"].my_name, "api-cell")
        rows = self.successResultOf(ns["api"].ping_all(ns["ctxt"]))
        self.assertEqual(len(rows), 8)

    def test_sessions_do_not_share_a_namespace(self) -> None:
        """A name set in one session is not seen by the next."""
        first = namespace_for(self.top)  # type: ignore[arg-type]
        first["scratch"] = 1
        self.assertNotIn("scratch", namespace_for(self.top))  # type: ignore[arg-type]

    def test_displayhook_shows_deferred_and_coroutine_results(self) -> None:
        """An expression giving a Deferred or a coroutine prints a handle,
        then the result when it fires."""
        waiting: defer.Deferred[int] = defer.Deferred()

        async def later() -> int:
            return await waiting + 1

        out = Output()
        interpreter = CellsManholeInterpreter(out, {"later": later, "waiting": waiting})
        interpreter.push(b"later()")
        self.assertEqual(out.lines, ["<Deferred #0>"])
        waiting.callback(41)
        self.assertEqual(out.lines[-1], "Deferred #0 called back: 42")
        interpreter.push(b"1 + 1")
        self.assertIn("2", out.lines)
