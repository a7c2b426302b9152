"""Fixtures of the link tests: a throwaway PKI, and in-memory TLS links.

ECDSA P-256 throughout, made with ``cryptography`` only. Independent of
``cellsd.pki`` on purpose, so the link tests can make certificates that
``cellsd pki`` never would: expired ones, wildcards, ones with no name.
Keys are cached per process because key generation dominates the cost.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypedDict

import attrs
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import IOPump, connectedServerAndClient
from zope.interface import implementer

from cellsd.errors import UnknownMethod
from cellsd.interfaces import IMessageReceiver
from cellsd.links.protocol import CellLinkProtocol
from cellsd.links.tls import TLSMaterial, client_options, server_options
from cellsd.messaging.message import Header

_DAY = datetime.timedelta(days=1)


@cache
def _key(label: str) -> ec.EllipticCurvePrivateKey:
    """One key per label, made once per test process."""
    del label
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@attrs.frozen
class Issued:
    """A certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    def private_certificate(self) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.loadPEM(self.cert_pem + self.key_pem)


@attrs.frozen
class CA:
    """A certificate authority that issues cell certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, label: str = "cellsd test CA") -> CA:
        key = _key("ca:" + label)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def certificate(self) -> ssl.Certificate:
        return ssl.Certificate.loadPEM(self.cert_pem)

    def issue(
        self,
        name: str,
        *,
        dns_names: Sequence[str] | None = None,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Issued:
        """A cell certificate: CN and DNS SAN ``name`` unless told otherwise.

        ``dns_names=()`` makes a certificate with no subjectAltName at all.
        """
        key = _key("cell:" + name)
        now = _now()
        sans = [name] if dns_names is None else list(dns_names)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _DAY)
            .not_valid_after(not_after or now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]),
                critical=False,
            )
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def material(self, name: str, **kwargs: Any) -> TLSMaterial:
        """The TLS material of cell ``name`` as :func:`load_tls` would give."""
        issued = self.issue(name, **kwargs)
        return TLSMaterial(ca=self.certificate(), own=issued.private_certificate())

    def write(self, directory: Path, name: str) -> tuple[Path, Path, Path]:
        """Write ca.pem, NAME.pem and NAME.key; return their paths."""
        issued = self.issue(name)
        ca_path = directory / "ca.pem"
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        ca_path.write_bytes(self.cert_pem)
        cert_path.write_bytes(issued.cert_pem)
        key_path.write_bytes(issued.key_pem)
        return ca_path, cert_path, key_path


def self_signed(name: str, trusting: CA) -> TLSMaterial:
    """Cell ``name``'s material with a certificate it signed itself (no CA
    at all), trusting ``trusting``: what an unrelated party would present."""
    key = _key("self:" + name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TLSMaterial(ca=trusting.certificate(), own=Issued(cert, key).private_certificate())


class Validity(TypedDict):
    not_before: datetime.datetime
    not_after: datetime.datetime


def expired() -> Validity:
    """Validity arguments for a certificate that expired yesterday."""
    now = _now()
    return {"not_before": now - 10 * _DAY, "not_after": now - _DAY}


def not_yet_valid() -> Validity:
    """Validity arguments for a certificate valid only from tomorrow."""
    now = _now()
    return {"not_before": now + _DAY, "not_after": now + 10 * _DAY}


# --------------------------------------------------------------------------
# In-memory links: two CellLinkProtocols over TLS over iosim


@implementer(IMessageReceiver)
class FakeReceiver:
    """A MessageRunner stand-in.

    By default it decodes the header (raising MalformedMessage for a bad
    one), raises UnknownMethod for method ``"no_such_method"``, and answers
    with one response echoing the sender and the body length. ``hold = True``
    makes it return Deferreds that the test fires (``pending``).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.calls: list[tuple[bytes, bytes, str, bool]] = []
        self.pending: list[Deferred[bytes]] = []
        self.hold = False
        self.raises: BaseException | None = None

    def receive(
        self, header: bytes, body: bytes, sender: str, from_parent: bool
    ) -> Deferred[bytes] | bytes:
        self.calls.append((header, body, sender, from_parent))
        if self.raises is not None:
            raise self.raises
        decoded = Header.from_bytes(header)
        if decoded.method_name == "no_such_method":
            raise UnknownMethod(kind="targeted", method_name=decoded.method_name)
        if self.hold:
            d: Deferred[bytes] = Deferred()
            self.pending.append(d)
            return d
        return orjson.dumps(
            [{"cell_name": self.name, "value": [sender, len(body)], "failure": False}]
        )


def header(method_name: str = "ping", **changes: object) -> bytes:
    """A valid routing header of a targeted message."""
    h = Header(
        message_type="targeted",
        uuid="5a1e2f9c-0000-4000-8000-000000000000",
        method_name=method_name,
        direction="down",
        need_response=True,
        fanout=False,
        routing_path="api",
        hop_count=1,
        max_hop_count=10,
        target_cell="api!child1",
    )
    d = h.to_dict()
    d.update(changes)
    return orjson.dumps(d)


@attrs.define
class LinkPair:
    """Both ends of one in-memory link: ``child`` dialed ``parent``."""

    child: CellLinkProtocol
    parent: CellLinkProtocol
    pump: IOPump
    clock: Clock
    child_receiver: FakeReceiver
    parent_receiver: FakeReceiver
    ready: list[CellLinkProtocol]
    lost: list[CellLinkProtocol]

    def flush(self) -> None:
        self.pump.flush()

    def disconnect(self) -> None:
        """Drop the connection (both sides see it lost)."""
        self.pump.clientIO.loseConnection()
        self.pump.flush()


def connect_link(
    *,
    parent_material: TLSMaterial,
    child_material: TLSMaterial | None,
    children: Sequence[str] = ("child1",),
    parent_name: str = "api",
    parent_max: int = 16 * 1024 * 1024,
    child_max: int = 16 * 1024 * 1024,
    client_creator: Any = None,
    flush: bool = True,
    parent_class: type[CellLinkProtocol] = CellLinkProtocol,
    child_class: type[CellLinkProtocol] = CellLinkProtocol,
) -> LinkPair:
    """Connect a dialing child to an accepting parent, in memory over TLS.

    ``child_material=None`` dials with no client certificate (trusting the
    parent's CA), unless ``client_creator`` gives the TLS options outright.
    """
    clock = Clock()
    ready: list[CellLinkProtocol] = []
    lost: list[CellLinkProtocol] = []
    child_receiver = FakeReceiver("child1")
    parent_receiver = FakeReceiver(parent_name)
    parent_ca = parent_material.ca.original.to_cryptography()

    built: dict[str, CellLinkProtocol] = {}

    def make_parent() -> CellLinkProtocol:
        built["parent"] = parent_class(
            parent_receiver,
            children,
            False,
            clock,
            parent_max,
            ready.append,
            lost.append,
            cell_name=parent_name,
            ca=parent_ca,
        )
        return built["parent"]

    def make_child() -> CellLinkProtocol:
        built["child"] = child_class(
            child_receiver,
            [parent_name],
            True,
            clock,
            child_max,
            ready.append,
            lost.append,
            cell_name="child1",
            ca=parent_ca,
        )
        return built["child"]

    if client_creator is None:
        if child_material is not None:
            client_creator = client_options(child_material, parent_name)
        else:
            client_creator = ssl.optionsForClientTLS(parent_name, trustRoot=parent_material.ca)
    server = TLSMemoryBIOFactory(
        server_options(parent_material), False, _Build(make_parent), clock=clock
    )
    client = TLSMemoryBIOFactory(client_creator, True, _Build(make_child), clock=clock)
    # The TLS wrappers forget their protocol when the connection is lost.
    _, _, pump = connectedServerAndClient(
        lambda: server.buildProtocol(None),
        lambda: client.buildProtocol(None),
        clock=clock,
        greet=flush,
    )
    return LinkPair(
        child=built["child"],
        parent=built["parent"],
        pump=pump,
        clock=clock,
        child_receiver=child_receiver,
        parent_receiver=parent_receiver,
        ready=ready,
        lost=lost,
    )


class _Build(Factory):
    def __init__(self, build: Callable[[], CellLinkProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: object) -> CellLinkProtocol:
        return self._build()
