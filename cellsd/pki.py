"""A small certificate authority for the cells of one deployment.

Neighbouring cells authenticate each other by mutual TLS, and a cell knows a
peer by the DNS name in its certificate, which is the cell name. So every
cell needs a certificate naming it, signed by a CA that every cell trusts.
This module makes both with the ``cryptography`` library, so that a test or
the demo needs no ``openssl`` binary. Keys are ECDSA P-256: handshakes are
cheap, which matters when a tree of cells reconnects at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cellsd.config import DNS_LABEL_RULE, is_dns_label
from cellsd.errors import CellsError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
#: Validity starts this long before the issuing clock's "now", so that a
#: certificate issued by a CA whose clock runs ahead (or checked by a peer
#: whose clock lags) is valid at once: well beyond the ten minutes of skew
#: between cells the fault suite injects (issue 7).
CLOCK_SKEW = timedelta(hours=1)


class PKIError(CellsError):
    """A CA or certificate could not be made; the message says why."""

    msg_fmt = "{reason}"


def init_ca(
    directory: Path | str,
    common_name: str = "cellsd CA",
    days: int = 3650,
    *,
    force: bool = False,
    now: datetime | None = None,
) -> Path:
    """Make the CA; refuses to replace one, which would orphan every cert.
    ``now`` is the issuing clock's time (default: this host's)."""
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        raise PKIError(
            f"a CA already exists in {directory} ({existing[0].name}); refusing to"
            " replace it, since every certificate it issued would stop being"
            " trusted (use --force to replace it anyway)"
        )
    if days < 1:
        raise PKIError(f"days must be at least 1, not {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _utc(now) if now is not None else datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(
    directory: Path | str,
    name: str,
    *,
    days: int = 825,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    extra_dns: Sequence[str] = (),
    now: datetime | None = None,
) -> tuple[Path, Path]:
    """Make cell NAME's certificate and key, signed by the CA.

    Unless ``not_before`` says otherwise, validity starts CLOCK_SKEW before
    ``now``, the issuing clock's time (default: this host's).

    The certificate serves both ends of a link (a cell dials its parents and
    accepts its children), hence both serverAuth and clientAuth. Issuing
    again replaces the cell's previous certificate and key.
    """
    if not is_dns_label(name):
        raise PKIError(f"cell name {name!r} {DNS_LABEL_RULE}")
    if not_after is None and days < 1:
        raise PKIError(f"days must be at least 1, not {days}")
    ca_cert, ca_key = load_ca(Path(ca_dir) if ca_dir is not None else Path(directory))
    now = _utc(now) if now is not None else datetime.now(UTC)
    start = _utc(not_before) if not_before is not None else now - CLOCK_SKEW
    end = _utc(not_after) if not_after is not None else now + timedelta(days=days)
    if end <= start:
        raise PKIError(f"certificate would expire ({end}) before it starts ({start})")
    try:
        dns = [x509.DNSName(n) for n in (name, *extra_dns)]
    except (ValueError, TypeError) as e:
        raise PKIError(f"bad DNS name in {extra_dns!r}: {e}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(dns), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(out_dir) if out_dir is not None else Path(directory)
    key_path, cert_path = out / f"{name}.key", out / f"{name}.pem"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def load_ca(
    directory: Path,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA's certificate and key, or a PKIError that says how to make them."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not (cert_path.is_file() and key_path.is_file()):
        raise PKIError(
            f"no CA in {directory} (need {CA_CERT} and {CA_KEY});"
            f" run `cellsd pki init --dir {directory}` first"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (ValueError, TypeError) as e:
        raise PKIError(f"cannot read the CA in {directory}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path} is not an ECDSA key made by cellsd pki")
    return cert, key


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, as X.509 validity is."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write through a temporary file so no reader sees half a key.

    The temporary file is created 0600, so a private key is never readable
    by others, not even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
