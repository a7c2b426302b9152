"""An SSH Python console into a running cell, for debugging; off by default.

* SSH only (twisted.conch), listening on a ``unix:…:mode=600`` socket or a
  loopback port (config refuses anything else), and refusing any connection
  that does not come from loopback should it ever listen elsewhere.
* Public keys only, from an ``authorized_keys`` file (any user name; the
  key is the credential). No password or keyboard-interactive method is
  offered at all.
* The host key is an Ed25519 key made on first start and kept in
  ``state_dir/manhole_host_key`` (mode 0600); its fingerprint is logged.
* Each session gets a fresh namespace: the service tree (``service``), the
  cell's parts (``cell``, ``runner``, ``state``, ``links``, ``manager``,
  ``store`` or None, ``metrics`` or None), a ``CellsAPI`` over an in-process
  transport (``api``), an admin context (``ctxt``) and the reactor, and
  ``reload()`` / ``reload(force=True)``, which re-reads the cell's config
  file as SIGHUP does (:mod:`cellsd.ops.reload`) and shows the report.
* An expression that gives a Deferred or a coroutine shows its result when
  it fires: ``api.ping(ctxt)`` prints ``<Deferred #0>``, then
  ``Deferred #0 called back: {...}``.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import IService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.error import ValidPublicKey
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.cred import portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.context import get_admin_context
from cellsd.rpc.api import CellsAPI
from cellsd.rpc.memory_transport import MemoryRPCTransport

with warnings.catch_warnings():
    # conch.checkers imports the stdlib spwd module, deprecated in 3.11 and
    # unused here (we never read the shadow password file).
    warnings.filterwarnings("ignore", "'spwd' is deprecated", DeprecationWarning)
    from twisted.conch.checkers import (
        InMemorySSHKeyDB,
        SSHPublicKeyChecker,
        readAuthorizedKeyFile,
    )

HOST_KEY_FILE = "manhole_host_key"

log = Logger(namespace="cellsd.ops.manhole")


# -- keys ---------------------------------------------------------------------------


def load_or_create_host_key(state_dir: Path) -> keys.Key:
    """The manhole's host key, made (Ed25519, mode 0600) on first use."""
    path = state_dir / HOST_KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        # O_EXCL: two workers starting at once must not both write it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            log.info("manhole: made host key {path}", path=str(path))
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} must be readable by its owner only (chmod 600)")
    return keys.Key.fromFile(str(path))


class _AnyUser(Mapping[bytes, list[keys.Key]]):
    """Every user name maps to the same keys: the key is the credential."""

    def __init__(self, authorized: list[keys.Key]) -> None:
        self._keys = authorized

    def __getitem__(self, username: bytes) -> list[keys.Key]:
        return self._keys

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def __len__(self) -> int:
        return 0


def read_authorized_keys(path: Path) -> list[keys.Key]:
    """The public keys listed in an OpenSSH ``authorized_keys`` file."""
    with open(path, "rb") as f:
        return list(readAuthorizedKeyFile(f))


class _LoggingChecker(SSHPublicKeyChecker):
    """Logs every signed login attempt (and every key refused outright)."""

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = super().requestAvatarId(credentials)
        user = credentials.username.decode("utf-8", "replace")

        def fingerprint() -> str:
            try:
                key = keys.Key.fromString(credentials.blob)
                return str(key.fingerprint(keys.FingerprintFormats.SHA256_BASE64))
            except Exception:
                return "(unreadable key)"

        def ok(avatar: bytes) -> bytes:
            log.info("manhole: {user} logged in with {key}", user=user, key=fingerprint())
            return avatar

        def refused(f: Failure) -> Failure:
            if not f.check(ValidPublicKey):
                log.warn("manhole: refused {user} with {key}", user=user, key=fingerprint())
            return f

        return d.addCallbacks(ok, refused)


def key_checker(authorized: Iterable[keys.Key]) -> SSHPublicKeyChecker:
    return _LoggingChecker(InMemorySSHKeyDB(_AnyUser(list(authorized))))


# -- the console ------------------------------------------------------------------


class CellsManholeInterpreter(manhole.ManholeInterpreter):
    """Shows a coroutine's result, as a Deferred's, when it is done."""

    def displayhook(self, obj: Any) -> None:
        if inspect.iscoroutine(obj):
            obj = defer.Deferred.fromCoroutine(obj)
        super().displayhook(obj)


class CellsManhole(manhole.ColoredManhole):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = CellsManholeInterpreter(self, self.namespace)


class _Session(manhole_ssh.TerminalSession):
    """Conch's terminal session, minus two NotImplementedErrors a client
    that resizes its window or sends EOF (``ssh -tt`` with piped input)
    would otherwise cause."""

    def windowChanged(self, newWindowSize: Any) -> None:
        pass

    def eofReceived(self) -> None:
        pass


@implementer(portal.IRealm)
class _Realm(manhole_ssh.TerminalRealm):
    sessionFactory = _Session


def namespace_for(top: IService) -> dict[str, Any]:
    """A fresh namespace for one session on the cell ``top`` runs."""
    cell = top.cell  # type: ignore[attr-defined]  # CellService has .cell
    metrics = getattr(top, "metrics", None)
    reloader = getattr(top, "reloader", None)
    api = CellsAPI(MemoryRPCTransport(cell.manager), call_timeout=cell.runner.call_timeout)
    return {
        "__name__": "__console__",
        "__doc__": __doc__,
        "service": top,
        "cell": cell,
        "runner": cell.runner,
        "state": cell.state,
        "links": cell.links,
        "manager": cell.manager,
        "store": getattr(cell, "store", None),
        "metrics": metrics,
        "api": api,
        "ctxt": get_admin_context(),
        "reactor": cell.runner.clock,
        "settings": cell.settings,
        # reload() / reload(force=True): re-read the config file (cellsd.ops.reload)
        "reload": reloader.reload if reloader is not None else None,
    }


class ManholeFactory(manhole_ssh.ConchFactory):
    """SSH on loopback or a private socket, public keys only."""

    noisy = False

    def __init__(self, top: IService, authorized: Iterable[keys.Key], host_key: keys.Key) -> None:
        realm = _Realm()

        def session() -> insults.ServerProtocol:
            return insults.ServerProtocol(CellsManhole, namespace_for(top))

        # Conch calls it with no arguments; its annotation asks for a class.
        realm.chainedProtocolFactory = session  # type: ignore[assignment]
        # Only the public-key checker: the server offers no other method.
        super().__init__(portal.Portal(realm, [key_checker(authorized)]))
        kind = host_key.sshType()
        # Instance dicts: ConchFactory's are shared class attributes.
        # manhole_ssh annotates these as bytes; SSHFactory wants Key objects.
        self.publicKeys = {kind: host_key.public()}
        self.privateKeys = {kind: host_key}  # type: ignore[dict-item]

    def buildProtocol(self, addr: IAddress | None) -> SSHServerTransport | None:  # type: ignore[override]  # None refuses
        if isinstance(addr, IPv4Address | IPv6Address) and not _loopback(addr.host):
            log.warn("manhole: refused a connection from {host}", host=addr.host)
            return None
        return super().buildProtocol(addr)


def _loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def make_factory(top: IService, authorized_keys: Path, state_dir: Path) -> ManholeFactory:
    """The manhole for the cell ``top`` runs, ready to listen."""
    authorized = read_authorized_keys(authorized_keys)
    if not authorized:
        log.warn("manhole: {path} lists no key; nobody can log in", path=str(authorized_keys))
    host_key = load_or_create_host_key(state_dir)
    log.info(
        "manhole: host key {fingerprint}, {count} authorized key(s)",
        fingerprint=host_key.fingerprint(keys.FingerprintFormats.SHA256_BASE64),
        count=len(authorized),
    )
    return ManholeFactory(top, authorized, host_key)
