"""TLS for links between cells: material, contexts, and peer identity.

Both sides present a certificate from the tree's CA and accept only that
CA (``trustRoot`` = our CA: a client certificate is required). Trusting the
CA proves only "some cell of this tree"; *which* cell is checked by name
with :func:`match_peer` once the handshake completes (see
:mod:`cellsd.links.protocol`). A cell's name is its certificate's DNS
subjectAltName.

When OpenSSL refuses a certificate it says only "certificate verify
failed"; :func:`explain_tls_failure` turns that, and the alerts a peer
sends back, into a sentence an operator can act on.
"""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cellsd.errors import ConfigError

_log = Logger()

#: The lowest TLS version a link negotiates.
MINIMUM_TLS = ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------
# Material


@attrs.frozen
class TLSMaterial:
    """The CA a cell trusts and its own certificate with key."""

    ca: ssl.Certificate
    own: ssl.PrivateCertificate

    @property
    def name(self) -> str:
        """The cell name the own certificate carries (its first DNS name)."""
        return certificate_name(self.own.original.to_cryptography())


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS subjectAltNames of ``cert`` (what identifies a cell)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName))


def certificate_name(cert: x509.Certificate) -> str:
    """The first DNS name of ``cert``, else its common name, else ``""``."""
    names = certificate_names(cert)
    if names:
        return names[0]
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def _read(key: str, path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from None


def load_tls(ca_path: str | Path, cert_path: str | Path, key_path: str | Path) -> TLSMaterial:
    """Load and check the PEM files named by the ``[tls]`` section.

    Raises :class:`ConfigError` naming the key (``tls.ca``, ``tls.cert``,
    ``tls.key``) when a file is unreadable, is not what it should be, when
    the key does not belong to the certificate, or when the certificate was
    not issued by the CA.
    """
    ca_pem = _read("tls.ca", ca_path)
    cert_pem = _read("tls.cert", cert_path)
    key_pem = _read("tls.key", key_path)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as e:
        raise ConfigError("tls.ca", f"{ca_path} is not a PEM certificate: {e}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise ConfigError("tls.cert", f"{cert_path} is not a PEM certificate: {e}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            "tls.key", f"{key_path} is not an unencrypted PEM private key: {e}"
        ) from None
    if key.public_key() != cert.public_key():
        raise ConfigError("tls.key", f"{key_path} is not the key of {cert_path}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            "tls.cert",
            f"{cert_path} ({certificate_name(cert)!r}) was not issued by the CA in {ca_path}",
        ) from None
    if not certificate_names(cert):
        raise ConfigError("tls.cert", f"{cert_path} has no DNS subjectAltName naming the cell")
    # Normalise both to PEM as Twisted wants them (a PKCS#8 key included).
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    own_pem = cert.public_bytes(serialization.Encoding.PEM)
    return TLSMaterial(
        ca=ssl.Certificate.loadPEM(ca.public_bytes(serialization.Encoding.PEM)),
        own=ssl.PrivateCertificate.loadPEM(own_pem + key_pem),
    )


# --------------------------------------------------------------------------
# Contexts


def server_options(material: TLSMaterial) -> ssl.CertificateOptions:
    """Options for the accepting (parent) side: our CA only, client
    certificate required, TLS 1.2 or later.

    A verify callback records why OpenSSL refused a client certificate so
    that the failure can be logged with a reason (:func:`explain_tls_failure`).
    """
    options = ssl.CertificateOptions(
        privateKey=material.own.privateKey.original,
        certificate=material.own.original,
        trustRoot=ssl.trustRootFromCertificates([material.ca]),
        raiseMinimumTo=MINIMUM_TLS,
    )
    # The context is made once and cached by CertificateOptions; adding the
    # callback there keeps Twisted's verify flags and affects nothing else.
    ctx = options.getContext()
    ctx.set_verify(ctx.get_verify_mode(), _record_verify_result)
    return options


def client_options(material: TLSMaterial, parent_name: str) -> IOpenSSLClientConnectionCreator:
    """Options for dialing ``parent_name``: its certificate must name it
    exactly (:func:`match_peer`: no wildcard) and come from our CA; we
    present our own certificate."""
    inner = ssl.optionsForClientTLS(
        parent_name,
        trustRoot=material.ca,
        clientCertificate=material.own,
        extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS},
    )
    return _ExactPeerName(inner, parent_name)


@implementer(IOpenSSLClientConnectionCreator)
class _ExactPeerName:
    """Twisted's client options (SNI, trust root, our certificate), with the
    peer's name checked by :func:`match_peer` instead of service_identity's
    hostname rules.

    Those accept wildcards, and a malformed one (a DNS name ``*``) makes
    them raise inside OpenSSL's verify callback, which Twisted logs as a
    traceback and then lets the handshake go on.
    """

    def __init__(self, inner: IOpenSSLClientConnectionCreator, name: str) -> None:
        self._inner = inner
        self._name = name

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            _name_check(tlsProtocol, self._name),
        )
        return connection


def _name_check(tls_protocol: Any, name: str) -> Any:
    """An OpenSSL verify callback: OpenSSL's verdict, then the leaf's name."""
    # Weak, as Twisted's own: the connection must not keep its protocol alive.
    protocol_ref = weakref.ref(tls_protocol)

    def verify(conn: SSL.Connection, cert: Any, err: int, depth: int, ok: int) -> bool:
        if not ok:
            return _record_verify_result(conn, cert, err, depth, ok)
        if depth != 0:
            return True
        # Never raise from an OpenSSL callback: the exception would be lost.
        try:
            leaf = cert.to_cryptography()
            if match_peer(leaf, [name]) is not None:
                return True
            _refused_names[conn] = tuple(certificate_names(leaf))
            protocol = protocol_ref()
            if protocol is not None:
                protocol.failVerification(Failure(VerificationError(errors=[])))
        except Exception:
            _log.failure("while checking the name in a peer's certificate")
        return False

    return verify


@implementer(IOpenSSLServerConnectionCreator)
class _CurrentServerCreator:
    """The accepting side's context, looked up per connection."""

    def __init__(self, owner: LinkTLS) -> None:
        self._owner = owner

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._owner.server.getContext(), None)


@implementer(IOpenSSLClientConnectionCreator)
class _CurrentClientCreator:
    """The dialing side's options for one parent, looked up per connection."""

    def __init__(self, owner: LinkTLS, parent_name: str) -> None:
        self._owner = owner
        self._parent = parent_name

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._owner.client(self._parent).clientConnectionForTLS(
            tlsProtocol
        )
        return connection


class LinkTLS:
    """The TLS contexts of one cell's links, replaceable while it runs.

    The listener and the dialers are given :meth:`server_creator` and
    :meth:`client_creator`, which look the current contexts up for each new
    connection. :meth:`replace` (a configuration reload with new
    certificates or CA) therefore changes what new connections use, while
    connections already made keep the TLS session they have.
    """

    def __init__(self, material: TLSMaterial) -> None:
        self.material = material
        self.server = server_options(material)
        self._clients: dict[str, IOpenSSLClientConnectionCreator] = {}

    def replace(self, material: TLSMaterial) -> None:
        self.material = material
        self.server = server_options(material)
        self._clients = {}

    def client(self, parent_name: str) -> IOpenSSLClientConnectionCreator:
        """The current options for dialing ``parent_name`` (made once per
        material)."""
        options = self._clients.get(parent_name)
        if options is None:
            options = self._clients[parent_name] = client_options(self.material, parent_name)
        return options

    def server_creator(self) -> IOpenSSLServerConnectionCreator:
        """For ``wrapServerTLS``: the current server context per connection."""
        return _CurrentServerCreator(self)

    def client_creator(self, parent_name: str) -> IOpenSSLClientConnectionCreator:
        """For ``TLSMemoryBIOFactory``: the current client options per
        connection to ``parent_name``."""
        return _CurrentClientCreator(self, parent_name)


def changed_parts(old: TLSMaterial, new: TLSMaterial) -> list[str]:
    """Which of ``ca``, ``cert`` and ``key`` differ between two materials
    (the key is compared by its public half: load_tls checked that it
    belongs to the certificate)."""

    def public_key(material: TLSMaterial) -> bytes:
        key = material.own.original.to_cryptography().public_key()
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    pairs = (
        ("ca", old.ca.dump(), new.ca.dump()),
        ("cert", old.own.dump(), new.own.dump()),
        ("key", public_key(old), public_key(new)),
    )
    return [part for part, before, after in pairs if before != after]


# --------------------------------------------------------------------------
# Peer identity


def match_peer(cert: x509.Certificate, candidates: Iterable[str]) -> str | None:
    """The first of ``candidates`` that ``cert`` is valid for, or None.

    A certificate with a wildcard DNS name never matches: a cell's
    certificate names exactly one cell.
    """
    names = certificate_names(cert)
    if not names or any("*" in name for name in names):
        return None
    for candidate in candidates:
        try:
            verify_certificate_hostname(cert, candidate)
        except (VerificationError, CertificateError, ValueError):
            continue
        return candidate
    return None


# --------------------------------------------------------------------------
# Explaining refusals

_V = SSL.X509VerificationCodes
_UNKNOWN_CA = frozenset(
    {
        _V.ERR_UNABLE_TO_GET_ISSUER_CERT,
        _V.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        _V.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
        _V.ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
        _V.ERR_SELF_SIGNED_CERT_IN_CHAIN,
        _V.ERR_CERT_SIGNATURE_FAILURE,
    }
)

#: Why OpenSSL refused the peer's certificate, per connection.
_verify_failures: weakref.WeakKeyDictionary[SSL.Connection, str] = weakref.WeakKeyDictionary()
#: The DNS names of the certificate refused, per connection: once a
#: handshake has failed OpenSSL no longer gives the peer's certificate.
_refused_names: weakref.WeakKeyDictionary[SSL.Connection, tuple[str, ...]] = (
    weakref.WeakKeyDictionary()
)


def _record_verify_result(conn: SSL.Connection, cert: Any, err: int, depth: int, ok: int) -> bool:
    # Never raise from an OpenSSL callback: the exception would be lost.
    try:
        if not ok and conn not in _verify_failures:
            leaf = cert.to_cryptography() if cert is not None else None
            _verify_failures[conn] = explain_verify_error(err, leaf, depth)
            if leaf is not None and depth == 0:
                _refused_names[conn] = tuple(certificate_names(leaf))
    except Exception:
        _log.failure("while recording a certificate verification failure")
    return bool(ok)


def refused_names(connection: SSL.Connection | None) -> tuple[str, ...]:
    """The DNS names of the peer certificate refused on ``connection``
    during its handshake (not authenticated: what the peer claimed)."""
    return _refused_names.get(connection, ()) if connection is not None else ()


def wildcard_refusal(names: Iterable[str]) -> str | None:
    """Why a certificate carrying a wildcard DNS name is refused, or None."""
    wild = [name for name in names if "*" in name]
    if not wild:
        return None
    return f"the wildcard DNS name {wild[0]!r} (a cell's certificate must name exactly one cell)"


def _utc(cert: x509.Certificate) -> tuple[datetime.datetime, datetime.datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _who(cert: x509.Certificate | None) -> str:
    if cert is None:
        return "the peer's certificate"
    return f"the certificate of {certificate_name(cert)!r}"


def explain_verify_error(
    err: int,
    cert: x509.Certificate | None,
    depth: int = 0,
    now: datetime.datetime | None = None,
) -> str:
    """An operator's explanation of an OpenSSL verify error code (``now``:
    this cell's clock, for a certificate not valid yet)."""
    who = _who(cert) if depth == 0 else f"{_who(cert)} (depth {depth} of the peer's chain)"
    if err == _V.ERR_CERT_HAS_EXPIRED:
        until = f" on {_utc(cert)[1]:%Y-%m-%d %H:%M} UTC" if cert is not None else ""
        return f"{who} expired{until}; issue a new one (cellsd pki issue)"
    if err == _V.ERR_CERT_NOT_YET_VALID:
        now = now or datetime.datetime.now(datetime.UTC)
        since = f"valid from {_utc(cert)[0]:%Y-%m-%d %H:%M:%S} UTC; " if cert is not None else ""
        return (
            f"{who} is not yet valid ({since}this cell's clock says "
            f"{now:%Y-%m-%d %H:%M:%S} UTC): check the clocks of both cells (is NTP running?)"
        )
    if err == _V.ERR_DEPTH_ZERO_SELF_SIGNED_CERT and depth == 0:
        return (
            f"{who} is self-signed, not issued by our CA; issue one with this tree's CA"
            " (cellsd pki issue)"
        )
    if err in _UNKNOWN_CA:
        issuer = f" (issuer: {cert.issuer.rfc4514_string()})" if cert else ""
        return (
            f"{who} was not issued by our CA{issuer}; issue it with this tree's CA or fix [tls] ca"
        )
    return f"{who} failed verification (OpenSSL verify error {err})"


def diagnose_certificate(
    cert: x509.Certificate,
    ca: x509.Certificate,
    now: datetime.datetime | None = None,
) -> str | None:
    """Why ``cert`` would fail verification against ``ca``, or None."""
    now = now or datetime.datetime.now(datetime.UTC)
    not_before, not_after = _utc(cert)
    if now < not_before:
        return explain_verify_error(_V.ERR_CERT_NOT_YET_VALID, cert, now=now)
    if now > not_after:
        return explain_verify_error(_V.ERR_CERT_HAS_EXPIRED, cert)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return explain_verify_error(_V.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, cert)
    return None


#: Alerts from the peer about *our* certificate, as OpenSSL words them.
_ALERTS = (
    (
        "alert certificate expired",
        "the peer says our certificate has expired; issue a new one (cellsd pki issue)",
    ),
    (
        "alert unknown ca",
        "the peer does not trust the CA of our certificate; "
        "both cells need certificates from the same CA",
    ),
    ("alert certificate required", "the peer requires a client certificate and we sent none"),
    (
        "alert bad certificate",
        "the peer refused our certificate (if it is not "
        "valid yet there, check the clocks of both cells)",
    ),
    ("alert certificate unknown", "the peer refused our certificate"),
    (
        "peer did not return a certificate",
        "the peer presented no client certificate; a cell must present one issued by our CA",
    ),
)


def explain_tls_failure(
    exc: BaseException,
    connection: SSL.Connection | None,
    ca: x509.Certificate | None,
    expected: str = "",
) -> str:
    """An operator's explanation of a failed TLS handshake.

    ``connection`` is the OpenSSL connection (``transport.getHandle()``), used
    to find out why *we* refused the peer's certificate; ``ca`` is our CA;
    ``expected`` the name we dialed, if we dialed.
    """
    chain = connection.get_peer_cert_chain(as_cryptography=True) if connection else None
    if isinstance(exc, VerificationError):
        names = list(refused_names(connection)) or (certificate_names(chain[0]) if chain else [])
        wild = wildcard_refusal(names)
        if wild is not None:
            return f"the peer's certificate carries {wild}; we dialed {expected or 'another'!r}"
        return (
            f"the peer's certificate does not name the cell we dialed: it names "
            f"{names or 'another name'}, we expected {expected or 'another'!r}"
        )
    text = str(exc)
    if "certificate verify failed" in text:
        recorded = _verify_failures.get(connection) if connection else None
        if recorded is not None:
            return recorded
        if chain and ca is not None:
            found = diagnose_certificate(chain[0], ca)
            if found is not None:
                return found
        return "the peer's certificate failed verification against our CA"
    for needle, explanation in _ALERTS:
        if needle in text:
            return explanation
    return f"TLS failed: {text}"
